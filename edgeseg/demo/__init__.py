"""`edgeseg demo`: real-time segmentation of a camera, stream, video file or image folder.

Device side: this package imports only numpy, OpenCV and a runner (ONNX Runtime or TensorRT), never torch,
so it runs on a Jetson with nothing but the deployment dependencies. Importing the package imports nothing heavy;
use `edgeseg.demo.app.run_demo`.
"""
