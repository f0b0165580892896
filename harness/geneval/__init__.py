"""GenEval for the shapes world: a rule-based detector in place of Mask2Former + CLIP, GenEval's
scoring rules, prompt files, and export/scoring in the official evaluator's folder layout.

    detector.detect(image) -> detections        rules.score_image(image, metadata) -> bool
    prompts.make_prompts(n_per_tag, seed, split) export.export(...) / export.score(dir)
"""
