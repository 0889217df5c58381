"""The zoo as commands reach it: model names, published weights, checkpoint files and a model ready to
evaluate. Everything above the models (training, benchmarks, deployment, detection) reaches models here.

* `index`: the zoo's families, names and published weights, read without importing timm;
* `names`: names as users type them (wildcards, families, tags), with close matches for a misspelling;
* `weights`: where published weights come from, and a failed download in one line;
* `deploy_checkpoint`: the deploy-form (re-parameterised) checkpoint format;
* `commands`: `lkconv list`, `lkconv info`, `lkconv demo`.

Importing this package imports neither torch nor timm.
"""
from .index import FAMILIES, family_models, list_models, pretrained_names

__all__ = ['FAMILIES', 'family_models', 'list_models', 'pretrained_names']
