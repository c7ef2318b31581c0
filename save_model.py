"""Write model files: the lean model file from a training checkpoint, or ONNX.

    python save_model.py SRC [--out mnist_model.pth]
    python save_model.py SRC --format onnx --out mnist_model.onnx
    python save_model.py SRC --format onnx-int8 --out mnist_model.int8.onnx [--data-dir data]

The library behind it: lenetkit.modelfile (the format) and lenetkit.onnxfiles (ONNX)."""

from lenetkit.commands import save as main  # the thread policy, then the script's main

if __name__ == "__main__":
    main()
