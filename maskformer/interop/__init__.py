"""
Interoperability with other MaskFormer implementations; import the modules directly (they are
read by the config and checkpoint loaders, so this package imports nothing on its own):
``hf`` (Hugging Face hub folders), ``hf_names`` (their parameter names). The class names that
come with a converted checkpoint are a dataset: ``maskformer.data.datasets.metadata_file``.
"""
