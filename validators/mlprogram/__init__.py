"""A NumPy reference interpreter for Core ML ML Programs (.mlpackage), for validating Core ML
artifacts on Linux, where Core ML itself does not run."""
