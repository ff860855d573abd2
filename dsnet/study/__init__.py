"""Studies: ordered stages of Hydra multiruns (:mod:`~dsnet.study.stages`), the learning-rate
choice of a search (:mod:`~dsnet.study.lr`), and run directories collected into tidy tables
(:mod:`~dsnet.study.collect`); ``python -m dsnet.study`` drives them."""
