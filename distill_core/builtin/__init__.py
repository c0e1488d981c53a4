"""The built-in teacher: a small class-conditional flow model on scikit-learn's digits.

It ships with the repository (weights in ``weights/``, the script that trains them
in ``train_weights.py``) so that the demo, the tests and the paper-claim benchmark
run offline on a CPU, and so that diversity and quality can be *counted* with a
classifier trained on the same data.
"""
