"""Weight quantization computed once in PyTorch (plan.py), for every format to write as it is."""
