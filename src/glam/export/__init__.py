"""Export a trained glam model to the Hugging Face format (docs/export.md).

``glam.export.tokenizer.write_hf_tokenizer``: the SentencePiece tokenizer as ``tokenizer.json`` and its
configs, loadable by ``transformers.AutoTokenizer`` without glam.
"""
