"""The shared real study of the metric tests and the BraTS 2020 algorithms segmenting it."""

REAL_CASE = "TCGA-DU-7294"
ALGORITHMS = ("hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
