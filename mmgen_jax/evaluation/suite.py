"""Measuring a generative run: images generated from test captions against the real test
images (FD, KID, precision/recall in a feature network's space; attribute consistency read
by the domain evaluator, also on captions in phrasings held out of train where the dataset
has such a split; variety per caption, `diversity`; fine-detail power,
`hf_power_ratio`), the same numbers for real reference images (the ceiling), and, for
families that also write captions, image->text and joint metrics, and for families with
a likelihood, importance-weighted bounds of the test set's log-likelihood.
"""

import math

import jax
import numpy as np

from mmgen_jax import parallel, runs, writers
from mmgen_jax.data import domains, pipeline, tokenizer
from mmgen_jax.evaluation import captions, extractors, feature_cache, metrics
from mmgen_jax.families import base


def load_split(run_config, split, num, data_dir):
    """The first `num` examples (at most all) of `split` of the run's dataset, one batch."""
    return runs.examples(run_config, num, split, data_dir)


class Suite:
    """The real test set read once (its features and attributes), then any number of
    generated sets measured against it.

    `settings` is a run's `eval` section (see `settings.defaults()`); `num_samples` test
    examples (at most the split) are used.
    """

    def __init__(self, run_config, settings, num_samples, data_dir):
        self.config, self.settings, self.data_dir = run_config, settings, data_dir
        domain = domains.domain_for(run_config.data.name)
        # Attributes that define "the same content" for `diversity` (stored in the split).
        self.attributes = list(domain.attributes) if domain else []
        # The dataset's one caption parser (text -> {attribute: class} or None), if it has one.
        self.parse_caption = domain.parse_caption if domain else None
        self._decode = tokenizer.by_name(run_config.data.get("tokenizer", "bytes")).decode
        self.extractor = extractors.get(settings.extractor, settings)
        # Consistency always reads attributes with the domain evaluator.
        self.judge = (
            self.extractor
            if settings.extractor == "evaluator"
            else extractors.get("evaluator", settings)
        )
        self.judge.check_dataset(run_config.data.name)
        self.test = load_split(run_config, run_config.data.eval_split, num_samples, data_dir)
        missing = [h for h in self.judge.heads if h not in self.test]
        if missing:
            raise ValueError(
                f"the evaluator reads {missing}, which {run_config.data.name!r}/"
                f"{run_config.data.eval_split} does not store"
            )
        self.num = len(self.test["caption"])
        if self.num < settings.kid_subset_size:
            raise ValueError(
                f"{self.num} test examples are fewer than eval.kid_subset_size="
                f"{settings.kid_subset_size}: lower it (or raise the number of samples)"
            )
        if settings.iwae_samples < 0:
            raise ValueError(
                f"eval.iwae_samples={settings.iwae_samples}: use a count >= 1 (0 = no likelihood)"
            )
        self.targets = {h: self.test[h] for h in self.judge.heads}
        self.phrasings = self._held_out_phrasings(domain)
        real_features = feature_cache.features(
            self.extractor,
            self.test["image"],
            self._cache_path(run_config.data.eval_split, self.num),
        )
        # Domain-evaluator distances are taken on features scaled so that the real test
        # features have unit mean square per dimension: KID's kernel (x.y / dim + 1)^3 assumes
        # O(1) features (on raw ReLU features, of a scale set by training, its subset std
        # exceeded its mean), and the numbers stay comparable between evaluators. P/R do not
        # change. Inception features stay raw: FID and KID are defined on them.
        self.feature_scale = (
            float(np.sqrt(np.mean(np.square(real_features))))
            if self.extractor.normalise_features
            else 1.0
        )
        self.real_features = real_features / self.feature_scale
        # diversity: one caption per attribute group of the test set, and the real spread.
        self.groups = self.attribute_groups(self.test)
        if self.groups:
            self.real_spread = metrics.mean_pairwise_distance(
                [self.real_features[g] for g in self.groups]
            )
        self._generators = {}  # family -> compiled BatchedMap, reused between calls

    def names(self):
        """Metric names this suite reports for a generator (best_metric must be one)."""
        tag = self.extractor.tag
        names = [f"fd_{tag}", f"kid_{tag}", f"kid_{tag}_std", f"precision_{tag}", f"recall_{tag}"]
        names += ["diversity"] if self.groups else []
        names += ["hf_power_ratio"]
        names += ["consistency"] + [f"consistency_{h}" for h in self.judge.heads]
        if "held_out" in self.test:
            names += ["consistency_seen", "consistency_held_out"]
        if self.phrasings is not None:
            names += ["consistency_phrasing_held_out"]
        return names

    def _held_out_phrasings(self, domain):
        """As many examples as the main set (the first, in stored order) of the domain's split
        captioned in phrasings held out of train, or None where the dataset (or the version
        prepared) has none."""
        split = domain.phrasing_split if domain else None
        d = self.config.data
        if split is None or split not in pipeline.split_names(
            d.name, self.data_dir, pipeline.builder_kwargs(d)
        ):
            return None
        return load_split(self.config, split, self.num, self.data_dir)

    def phrasing_consistency(self, family, variables):
        """`consistency_phrasing_held_out`: the share of images drawn from captions in
        held-out phrasings whose evaluator-read attributes all match the caption. Image i uses
        the noise of the main set's image i."""
        tokens = self.phrasings["text"]
        images = self._draw(family, variables, tokens, np.arange(len(tokens), dtype=np.uint32))
        _, predicted = self.judge(images)
        targets = {h: self.phrasings[h] for h in self.judge.heads}
        scores = metrics.consistency(predicted, targets)
        return {"consistency_phrasing_held_out": scores["consistency"]}

    def _cache_path(self, split, num):
        """Where the extractor's features of `num` real `split` images are cached (or None)."""
        d = self.config.data
        return feature_cache.path_for(self.extractor, d.name, split, num, d.image_size)

    def read(self, images, real_split=None):
        """(features in the distance space, evaluator's attribute predictions); images of a
        real `real_split` take their features from the cache when it holds them."""
        path = None if real_split is None else self._cache_path(real_split, len(images))
        if path is None:
            features, predicted = self.extractor(images)
        else:
            features, predicted = feature_cache.features(self.extractor, images, path), None
        features = features / self.feature_scale
        if predicted is None or self.judge is not self.extractor:
            _, predicted = self.judge(images)
        return features, predicted

    def distances(self, features):
        """FD, KID (mean, std) and precision/recall of `features` against the real test set."""
        s, tag = self.settings, self.extractor.tag
        kid, kid_std = metrics.kernel_inception_distance(
            features, self.real_features, s.kid_subsets, s.kid_subset_size, seed=s.seed
        )
        precision, recall = metrics.precision_recall(self.real_features, features, s.pr_k)
        return {
            f"fd_{tag}": metrics.frechet_distance(features, self.real_features),
            f"kid_{tag}": kid,
            f"kid_{tag}_std": kid_std,
            f"precision_{tag}": precision,
            f"recall_{tag}": recall,
        }

    def measure_images(self, images):
        """All image metrics of images drawn for the test captions (row i for caption i)."""
        features, predicted = self.read(images)
        return {
            **self.distances(features),
            "hf_power_ratio": metrics.hf_power_ratio(images, self.test["image"]),
            **metrics.consistency(predicted, self.targets, self.test.get("held_out")),
        }

    def attribute_groups(self, examples):
        """Index arrays of `examples` that share all attribute values, in order of first
        appearance, those with 2+ members only, at most eval.diversity_captions of them;
        [] when the dataset has no known attributes."""
        present = [a for a in self.attributes if a in examples]
        if not present:
            return []
        keys = np.stack([np.asarray(examples[a]) for a in present], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = [np.flatnonzero(inverse == g) for g in np.argsort(first)]
        return [g for g in groups if len(g) >= 2][: self.settings.diversity_captions]

    def _draw(self, family, variables, tokens, indices):
        if family not in self._generators:
            self._generators[family] = runs.generator(family)
        key = jax.random.PRNGKey(self.settings.seed)
        run = self._generators[family]
        return run((variables, key), tokens, indices, batch_size=self.settings.batch_size)

    def generate(self, family, variables):
        """Images from the test captions; image i uses noise fold_in(PRNGKey(seed), i)."""
        indices = np.arange(self.num, dtype=np.uint32)
        return self._draw(family, variables, self.test["text"], indices)

    def diversity(self, family, variables):
        """K = eval.diversity_samples images of the first caption of each attribute group,
        their mean pairwise feature distance over that of the group's real test images.
        Sample k of caption i uses noise index num + i * K + k: beyond the main set's."""
        k = self.settings.diversity_samples
        if k < 2:
            raise ValueError(f"eval.diversity_samples={k}: it needs at least 2 images a caption")
        first = np.array([g[0] for g in self.groups])
        tokens = np.repeat(self.test["text"][first], k, axis=0)
        indices = (self.num + np.arange(len(tokens))).astype(np.uint32)
        features = self.read_features(self._draw(family, variables, tokens, indices))
        generated = features.reshape(len(first), k, -1)
        return metrics.mean_pairwise_distance(generated) / self.real_spread

    def read_features(self, images):
        """Features in the distance space only (no attribute reading)."""
        return self.extractor(images)[0] / self.feature_scale

    def measure_run(self, family, variables, cross_check=False, likelihood=True):
        """Every metric of a trained family: images from test captions and, where the family
        declares IMAGE_TO_TEXT / JOINT / LIKELIHOOD, image->text, joint coherence and the
        test-set likelihood; where the dataset has held-out phrasings, the consistency on
        them. With
        `cross_check`, also the consistency the independent attribute judge reads in the same
        images (`judge_consistency...`; datasets whose domain declares `drawn_digits`)."""
        images = self.generate(family, variables)
        out = self.measure_images(images)
        if self.phrasings is not None and family.can(base.TEXT_TO_IMAGE):
            out.update(self.phrasing_consistency(family, variables))
        if self.groups:
            out["diversity"] = self.diversity(family, variables)
        if cross_check:
            out.update(self.judge_consistency(images))
        if family.can(base.IMAGE_TO_TEXT):
            out.update(self.image_to_text(family, variables))
        if family.can(base.JOINT):
            out.update(self.joint(family, variables))
        if likelihood and family.can(base.LIKELIHOOD) and self.settings.iwae_samples:
            out.update(self.likelihood(family, variables))
        return out

    def judge_consistency(self, images):
        """Consistency as read by `attribute_judge` (pixel colours + an SVM on the 8x8 digits),
        which shares nothing with the evaluator: a check of the evaluator's reading."""
        from mmgen_jax.evaluation import attribute_judge  # scikit-learn: only when asked

        domain = attribute_judge.domain_of(self.config.data.name)
        read = attribute_judge.judge(writers.to_uint8(images), domain)
        scores = metrics.consistency(read, self.targets, self.test.get("held_out"))
        return {f"judge_{k}": v for k, v in scores.items()}

    def reference(self, split):
        """The ceiling: real images of `split` measured as if they were generated."""
        real = load_split(self.config, split, self.num, self.data_dir)
        features, predicted = self.read(real["image"], real_split=split)
        targets = {h: real[h] for h in self.judge.heads}
        groups = self.attribute_groups(real)
        spread = {}
        if self.groups and groups:
            spread["diversity"] = (
                metrics.mean_pairwise_distance([features[g] for g in groups]) / self.real_spread
            )
        return {
            **self.distances(features),
            **spread,
            "hf_power_ratio": metrics.hf_power_ratio(real["image"], self.test["image"]),
            **metrics.consistency(predicted, targets, real.get("held_out")),
            "num": len(real["caption"]),
        }

    # ---- families that also write captions (the multimodal VAE) --------------------------
    def _key(self):
        return jax.random.PRNGKey(self.settings.seed)

    def image_to_text(self, family, variables):
        """Captions the family writes for the real test images (greedy): BLEU-4 against the
        test captions and, where the dataset's domain parses captions, the share that parse
        (`caption_parsed`) and that state each attribute right."""
        describe = parallel.BatchedMap(
            lambda shared, images, idx: family.describe(shared[0], images, shared[1], idx)
        )
        tokens = describe(
            (variables, self._key()),
            self.test["image"],
            np.arange(self.num, dtype=np.uint32),
            batch_size=self.settings.batch_size,
        )
        texts = [self._decode(t) for t in tokens]
        out = {"caption_bleu4": captions.corpus_bleu4(texts, self.test["caption"])}
        if self.parse_caption:
            stated = [self.parse_caption(t) for t in texts]
            shares = captions.stated_shares(stated, self.targets)
            out.update({f"caption_{k}": v for k, v in shares.items()})
        return out

    def joint(self, family, variables):
        """Joint samples (image, caption) from the prior `variables` carry (N(0, I), or the
        fitted mixture of `runs.with_joint_prior`): the share whose caption states exactly the
        attributes the evaluator reads in the image (unparsable captions count as wrong);
        nothing where the dataset's domain parses no captions."""
        if not self.parse_caption:
            return {}
        sample = parallel.BatchedMap(lambda shared, idx: family.joint(shared[0], shared[1], idx))
        images, tokens = sample(
            (variables, self._key()),
            np.arange(self.num, dtype=np.uint32),
            batch_size=self.settings.batch_size,
        )
        _, predicted = self.judge(images)
        stated = [self.parse_caption(self._decode(t)) for t in tokens]
        agree = [
            s is not None and all(s.get(h) == predicted[h][i] for h in self.judge.heads)
            for i, s in enumerate(stated)
        ]
        return {
            "joint_coherence": float(np.mean(agree)),
            "joint_parsed": float(np.mean([s is not None for s in stated])),
        }

    def likelihood(self, family, variables):
        """Mean IWAE bounds (eval.iwae_samples draws per example) over the test examples, in
        nats per example: `log_p_joint` (image and caption), `log_p_image`, `log_p_text`;
        and the image's in bits per dimension (`image_bits_per_dim`)."""
        num_samples = self.settings.iwae_samples
        bound = parallel.BatchedMap(
            lambda shared, images, tokens, idx: family.log_likelihood(
                shared[0], images, tokens, shared[1], idx, num_samples
            )
        )
        values = bound(
            (variables, self._key()),
            self.test["image"],
            self.test["text"],
            np.arange(self.num, dtype=np.uint32),
            batch_size=self.settings.batch_size,
        )
        out = {f"log_p_{m}": float(np.mean(values[m])) for m in ("joint", "image", "text")}
        dims = int(np.prod(self.test["image"].shape[1:]))
        out["image_bits_per_dim"] = bits_per_dim(out["log_p_image"], dims)
        return out


def bits_per_dim(log_density, dims, levels=256):
    """Bits per dimension of images with 8-bit pixels scaled to [-1, 1], from a continuous
    log-density in nats: each pixel value stands for a bin of width 2 / (levels - 1), so
    log P(pixels) ~= log p + dims * log(2 / (levels - 1))."""
    log_prob = log_density + dims * math.log(2.0 / (levels - 1))
    return -log_prob / (dims * math.log(2.0))
