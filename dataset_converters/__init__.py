"""Raw datasets -> RecBole atomic files (``.inter``, ``.item``) plus ``.text`` and ``summary.json``.

Converters: ``ml100k`` (recbole's bundled copy), ``movie`` (The Movies Dataset), ``netflix``
(Netflix Prize), ``mind`` (MIND); all share :mod:`dataset_converters.core`. ``card`` prints a
built dataset's numbers beside the paper's Table 1.
"""
