"""``tfyarn bench reproduce``: three published Spark deep-learning experiments, side by side.

1. Di Nardo's distributed LSTM on Iris (weights averaged over Spark partitions) against
   tfyarn model averaging and synchronous all-reduce (:mod:`.lstm_iris`);
2. Spark MLlib's MultilayerPerceptronClassifier [262144, 100, 80, 20] and NaiveBayes on
   hashed TF-IDF against the same MLP trained on sparse input through tfyarn
   (:mod:`.debdesc_mlp`, on DebDesc-20 since 20 Newsgroups cannot be downloaded here);
3. CERN dist-keras's EASGD against synchronous all-reduce Adagrad on a 380,402-parameter
   model with 250,000 instances: loss against time and time spent waiting
   (:mod:`.easgd_adagrad`).

Writes ``reproduce.md`` (tables, targets, plots, the command to rerun each part),
``reproduce.json`` and ``reproduce_part*.png`` under ``--out``.
"""

from benchmarks.reproductions.runner import add_arguments, run

__all__ = ["add_arguments", "run"]
