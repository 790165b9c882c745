"""MNIST-1D, the embedded default dataset: generated offline, any number of samples."""

from __future__ import annotations

import math

import torch

from kdcli.data import mnist1d_gen as gen
from kdcli.data.base import Dataset, Split
from kdcli.data.cache import cached_arrays
from kdcli.data.registry import register_dataset
from kdcli.errors import ConfigError


class MNIST1D(Dataset):
    name = "mnist1d"
    num_classes = gen.NUM_CLASSES
    input_shape = (1, gen.FINAL_LEN)
    extensible = True
    class_names = [str(i) for i in range(10)]

    def _stream(self, stream: str, start: int, stop: int) -> Split:
        seed = self.args["seed"]
        shifts = {k: self.args[k] for k in gen.SHIFTS if k in self.args}
        tag = "".join(f"-{k}{v!r}" for k, v in sorted(shifts.items()))  # exact: repr, not rounded
        key = f"mnist1d/{gen.GENERATOR_VERSION}-seed{seed}{tag}-{stream}-{start}-{stop}"
        arrays = cached_arrays(key, lambda: dict(zip("xy", gen.generate(seed, stream, start, stop, **shifts))))
        x = torch.from_numpy(arrays["x"]).unsqueeze(1)  # [N, 1, 40]
        return Split(x, torch.from_numpy(arrays["y"]), torch.arange(start, stop, dtype=torch.int64))

    def _load(self) -> tuple[Split, Split]:
        return (self._stream("train", 0, self.args["n_train"]),
                self._stream("test", 0, self.args["n_test"]))

    def extra(self, n: int) -> Split:
        n_train = self.args["n_train"]
        return self._stream("train", n_train, n_train + n)


@register_dataset("mnist1d")
def mnist1d(n_train: int = 4000, n_test: int = 2000, seed: int = 42,
            generator: str = gen.GENERATOR_VERSION, corr_noise: float = gen.CORR_NOISE_SCALE,
            iid_noise: float = gen.IID_NOISE_SCALE, max_translation: int = gen.MAX_TRANSLATION,
            scale_coeff: float = gen.SCALE_COEFF, shear: float = gen.SHEAR_SCALE) -> MNIST1D:
    """MNIST-1D (Greydanus 2020) from kdcli's vectorised generator.

    n_train is the pool (the teacher's n_T); κ > 1 draws further train samples.
    `generator` is recorded in artifacts; only this kdcli's version can be rebuilt.
    corr_noise, iid_noise, max_translation, scale_coeff and shear shift the distribution (the
    scales of the generator's random transformations, kdcli/data/mnist1d_gen.py); recorded in the
    arguments only when they differ from the reference's values, so the default dataset's
    fingerprint is the one it always had.
    """
    if generator != gen.GENERATOR_VERSION:
        raise ConfigError(f"--dataset-arg generator={generator}: this kdcli generates MNIST-1D with "
                          f"{gen.GENERATOR_VERSION}; artifacts made with another generator cannot be rebuilt")
    for flag, value in (("n_train", n_train), ("n_test", n_test)):
        if int(value) < gen.NUM_CLASSES:
            raise ConfigError(f"--dataset-arg {flag}={value}: need at least {gen.NUM_CLASSES} samples")
    args = {"n_train": int(n_train), "n_test": int(n_test), "seed": int(seed),
            "generator": gen.GENERATOR_VERSION}
    for k, v in (("corr_noise", corr_noise), ("iid_noise", iid_noise), ("max_translation", max_translation),
                 ("scale_coeff", scale_coeff), ("shear", shear)):
        if isinstance(v, bool):
            raise ConfigError(f"--dataset-arg {k}={v}: expected a number")
    shifts = {"corr_noise": float(corr_noise), "iid_noise": float(iid_noise),
              "max_translation": int(max_translation), "scale_coeff": float(scale_coeff), "shear": float(shear)}
    if float(max_translation) != shifts["max_translation"] or not 1 <= shifts["max_translation"] <= gen.WIDTH:
        raise ConfigError(f"--dataset-arg max_translation={max_translation}: expected an integer from 1 to "
                          f"{gen.WIDTH} (samples are rolled by up to that many of their {gen.WIDTH} points)")
    for k in ("corr_noise", "iid_noise", "scale_coeff", "shear"):
        if not math.isfinite(shifts[k]) or shifts[k] < 0:
            raise ConfigError(f"--dataset-arg {k}={shifts[k]}: expected a finite value ≥ 0")
    if shifts["scale_coeff"] >= 2:
        raise ConfigError(f"--dataset-arg scale_coeff={shifts['scale_coeff']}: expected < 2 (samples are "
                          "scaled by 1 + scale_coeff·u, u uniform in [-0.5, 0.5), which must stay positive)")
    args.update({k: v for k, v in shifts.items() if v != gen.SHIFTS[k]})
    return MNIST1D(args)
