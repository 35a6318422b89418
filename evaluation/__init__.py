"""How good is a model? The yardstick evaluation that ``evaluate.py`` is the command line of: a small
classifier trained on the model's own data scores its samples (class accuracy, Frechet distance in
its features, does the model listen to its condition, do free-text prompts land on their class).

    evaluation.classifier    the yardstick networks (SmallResNet, PlainConvNet, build_classifier), their
                             training, predict / classify, top-k and per-class accuracy, save / load
    evaluation.train_state   a classifier's training state per epoch (resume)
    evaluation.colour        the colour-only baseline (logistic regression on colour histograms)
    evaluation.frechet       frechet_distance and its two terms (frechet_parts), its bootstrap noise,
                             pytorch-fid's Inception features
    evaluation.conditioning  the conditioning check on generated and on real photos
    evaluation.generation    generate_per_class: the j-th image of every class from one seed
    evaluation.free_text     the free-text prompts' TSV and their scores
    evaluation.yardstick     the model's classes among the yardstick's, fitting it (YardstickRecipe),
                             degraded photos and the check that it can tell them from real ones
    evaluation.report        evaluate (the whole evaluation, one Row per sampler setting) and format_table

The package re-exports the public names of its modules; code inside it imports from the defining module.
"""
from __future__ import annotations

from evaluation.classifier import (AUGMENTATIONS, CLASSIFIER_ARCHS, CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS,
                                   MAX_CLASSIFIER_BLOCKS, MAX_CLASSIFIER_WIDTH, BasicBlock, Classifier, PlainConvNet,
                                   SmallResNet, build_classifier, classify, load_classifier,
                                   per_class_accuracy, predict, save_classifier, top_k_accuracy, train_classifier)
from evaluation.conditioning import (CONDITIONING_TARGET, binomial_tail, conditioning_check, named_pairs,
                                     real_conditioning)
from evaluation.free_text import free_text_rows, read_free_text
from evaluation.frechet import InceptionFeatures, fd_bootstrap_sd, frechet_distance, frechet_parts
from evaluation.generation import generate_per_class
from evaluation.report import Row, evaluate, format_table
from evaluation.yardstick import (DEGRADATIONS, YardstickClasses, YardstickRecipe, class_balanced_subset,
                                  class_positions, degrade, fit_yardstick, model_subset, yardstick_check)

__all__ = [
    "AUGMENTATIONS", "CLASSIFIER_ARCHS", "CLASSIFIER_CONFIG", "CLASSIFIER_WEIGHTS", "MAX_CLASSIFIER_BLOCKS",
    "MAX_CLASSIFIER_WIDTH", "BasicBlock", "Classifier", "PlainConvNet",
    "SmallResNet", "build_classifier", "classify", "load_classifier", "per_class_accuracy", "predict",
    "save_classifier", "top_k_accuracy", "train_classifier",
    "CONDITIONING_TARGET", "binomial_tail", "conditioning_check", "named_pairs", "real_conditioning",
    "free_text_rows", "read_free_text",
    "InceptionFeatures", "fd_bootstrap_sd", "frechet_distance", "frechet_parts",
    "generate_per_class",
    "Row", "evaluate", "format_table",
    "DEGRADATIONS", "YardstickClasses", "YardstickRecipe", "class_balanced_subset", "class_positions", "degrade",
    "fit_yardstick", "model_subset", "yardstick_check",
]
