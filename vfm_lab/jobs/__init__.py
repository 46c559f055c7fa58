"""Command-line training jobs (``vfm-lab train CHAPTER``; under torchrun: DDP).

A job is the chapter's main training run without the narration: load the data the
config names, build the method, train it with the engine, evaluate the backbone, and
write ``results.json``. The notebooks walk through the same steps one cell at a time.
One module per chapter (``supervised``, ``clip``, ``ssl`` for 03 and 04, ``mim``, ``synergy``, ``fusion``, ``region``, ``pixel``) on top
of ``common`` (data splits, :func:`train`, the one way to train a method on a config, and the shared
self-supervised :func:`pretrain`); every name is
importable from ``vfm_lab.jobs``.
"""
from __future__ import annotations

from typing import Any, Callable

from vfm_lab.jobs.clip import (CLIP_VARIANTS, ICON_BATCH, TABLE_KEYS, build_clip, clip_augment, clip_job,
                               clip_metrics, clip_splits, compare_clip, fashion_zero_shot, format_table, icon_sets,
                               shapes_templates, table_row, train_clip, train_icons)
from vfm_lab.jobs.common import (SAME_TRAINING, Run, embed_two_views, fresh_backbone, load_splits, on_available_data,
                                 pretrain, random_init_baseline, shapes_half, supervised_augment, train,
                                 weights_from)
from vfm_lab.jobs.fusion import (CLIP_ONLY, FUSION_KEYS, QUESTION_TYPES, answer, attribute_accuracy, build_coca,
                                 caption_attributes, caption_scores, encode_images, fusion_job, fusion_metrics,
                                 fusion_splits, itm_accuracy, question_type, retrieval_metrics, train_coca,
                                 true_attributes, vqa_accuracy, write_captions)
from vfm_lab.jobs.mim import (MIM_METHODS, build_mim, finetune_low_label, mean_patch_probe, probe_and_finetune, probes,
                              train_mim)
from vfm_lab.jobs.pixel import (BACKBONES, CLICKS, TOLERANCES, build_segmenter, build_text_segmenter, decoder_timing,
                                encoder_sweep, flood_fill, flood_tolerance, jaccard, object_iou, open_vocab_metrics, pixel_data,
                                pixel_job, prompt_metrics, scene_objects, semantic_labels, train_segmenter,
                                train_text_segmenter)
from vfm_lab.jobs.region import (HELDOUT_SHAPES, OBJECT_PROMPT, TOWER_ENTRIES, RegionData, build_grounder,
                                 clip_towers, coco_ap, coco_json, detect_all, detection_metrics, grounder_texts,
                                 grounding_accuracy, object_categories, objects, other_tower, pretrained_lr,
                                 region_job, region_splits, train_grounder)
from vfm_lab.jobs.ssl import (NON_CONTRASTIVE, build_contrastive, build_non_contrastive, contrastive_views,
                              supervised_reference, train_contrastive, train_non_contrastive, tuned_views)
from vfm_lab.jobs.supervised import build_supervised, train_supervised
from vfm_lab.jobs.synergy import (COMPARE, FLIP_DROPS, LIT_ROWS, MIM_KEYS, PAIR_MODELS, SYNERGY_KEYS, build_pair_model,
                                  compare_supervision, flip_masking, flip_model, flip_throughput, lit_vs_locked_text,
                                  mim_students, supervised_tower, synergy_job, synergy_table, train_pair, unicl_texts)

JOBS: dict[str, Callable[[Any], dict[str, Any]]] = {"01_supervised": train_supervised,
                                                    "02_clip": clip_job,
                                                    "03_contrastive": train_contrastive,
                                                    "04_non_contrastive": train_non_contrastive,
                                                    "05_mim": train_mim,
                                                    "06_synergy": synergy_job,
                                                    "07_fusion": fusion_job,
                                                    "08_region": region_job,
                                                    "09_pixel": pixel_job}
