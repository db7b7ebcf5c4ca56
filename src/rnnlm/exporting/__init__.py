"""Taking a model anywhere: ``python export.py`` writes it as ONNX (``onnx``) or as a static web
page that samples it in the browser (``web``), optionally quantized to int8."""
