"""Profiles: named sets of protocol sizes (PROTOCOL.md section 6).

Every value an entry's numbers depend on is recorded in it: each stage records the protocol
parameters of the code it ran (:meth:`xrbench.stages.Stage.params`), so a number is never a
silent constant. Values the protocol fixes (RelEx 50 x 50, RPS 10 draws,
PGD 10 steps...) keep their protocol value in ``paper`` and ``quick``; only ``smoke`` (tests
and CI) shrinks them, and says so in its parameters. ``smoke`` also trains a short recipe
(3 epochs unless ``--epochs`` says otherwise): the recipe, and so its hash, records it, so a
smoke checkpoint never passes for the reference one. The subset extractor trains 25 epochs
for ``paper``, 3 for ``quick`` (protocol version 3) and 1 for ``smoke`` (a short recipe: the
manifest records it and is cached under another name, :class:`xrbench.subset.ExtractorSpec`),
except where the package ships the manifest (digits, Fashion-MNIST), which every profile of
that size uses as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import XRBenchError

if TYPE_CHECKING:  # the profile table must import without torch (xrbench --help)
    from .data import DatasetCard

#: 2: SEP L_f in L_e's form, RelEx clean class, 20 insertion ratios; 3: RobustAGA's SSIM
#: (7-tap window, zero padding, whole map), quick's subset extractor trains 3 epochs,
#: Fashion-MNIST found where Debian installs it (PROTOCOL.md's head lists the changes)
PROTOCOL_VERSION = 3
#: relative fall of the manipulation's mean loss between the 50% and 100% trace points above
#: which an entry is flagged ``not_converged`` (PROTOCOL 5.2, 6)
CONVERGENCE_TOLERANCE = 0.05


def check_seed(seed: int) -> None:
    """Seeds are non-negative integers (torch generators take no others)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise XRBenchError(f"seed {seed!r} is out of range: it must be an integer >= 0")


CLUSTERS = 10  # k-means k (SEP paper appendix C)
PAPER_LR_NORMALISED = 2e-4  # Dombrowski reference run_attack.py, in normalised input units


@dataclass(frozen=True)
class Profile:
    """Sizes of one evaluation. Learning rates are in pixel units ([0, 1] images)."""

    name: str
    per_cluster: int  # subset images per k-means cluster (x10 clusters)
    manipulation_iterations: int  # Adam steps of the Dombrowski attack (5.2)
    manipulation_lr: float | None  # pixel units; None = 2e-4 x dataset std (paper, 5.2)
    pgd_max_images: int | None  # test images for clean/PGD accuracy; None = whole split
    pgd_steps: int = 10  # 5.1
    rps_draws: int = 10  # 5.3
    adv_insertion_iterations: int = 100  # 5.4
    relex_iterations: int = 50  # 5.5 (RelEx reference code)
    relex_samples: int = 50  # 5.5
    retrieval_pgd_steps: int = 20  # 5.5
    landscape_pairs: int = 100  # 5.6: fixed sample of pairs
    landscape_gamma_max_eps: float = 2.0  # 5.6: grid 0..this x eps_pgd (pixel units)
    landscape_points: int = 11
    bootstrap_resamples: int = 1000  # 5.7
    pair_batch: int = 512  # pairs per manipulation chunk (memory/speed only; results independent)
    train_epochs: int | None = None  # a short recipe for this profile (None: the reference)
    extractor_epochs: int | None = None  # the subset extractor's short recipe (None: reference)
    #: 5.8: the worst-case ensemble runs on the pairs among the first this-many images of each
    #: cluster (the most central ones); None: on every pair of the manipulation
    ensemble_per_cluster: int | None = None

    @property
    def n_images(self) -> int:
        return self.per_cluster * CLUSTERS

    @property
    def n_pairs(self) -> int:
        return self.n_images * (self.n_images - 1)

    def lr_for(self, card: DatasetCard) -> float:
        """Manipulation learning rate in pixel units for ``card``."""
        if self.manipulation_lr is not None:
            return self.manipulation_lr
        return PAPER_LR_NORMALISED * card.mean_std


# ``quick``: iterations and lr chosen by measurement on digits (docs/quick-profile.md): the
# paper profile's total Adam movement (lr x steps = 2e-4 x std x 1500, 0.113 pixel on digits)
# in 150 steps, which keeps the predicted class. Doubling the iterations with the step halved
# moves Expl@end by at most 1.0% on the seven digits models (and running paper's 1500 steps at
# its lr on the same pairs by at most 1.9%); at the same lr the loss is still falling (the
# not_converged flag), which no setting within the quick budget avoids on digits.
PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", per_cluster=15, manipulation_iterations=1500,
                     manipulation_lr=None, pgd_max_images=None, ensemble_per_cluster=5),
    "quick": Profile("quick", per_cluster=5, manipulation_iterations=150,
                     manipulation_lr=7.5e-4, pgd_max_images=1000, extractor_epochs=3),
    "smoke": Profile("smoke", per_cluster=2, manipulation_iterations=20, manipulation_lr=5e-3,
                     pgd_max_images=200, rps_draws=4, adv_insertion_iterations=10,
                     relex_iterations=10, relex_samples=8, landscape_pairs=20,
                     landscape_points=5, bootstrap_resamples=200, train_epochs=3,
                     extractor_epochs=1, ensemble_per_cluster=1),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise XRBenchError(f"unknown profile {name!r}; valid profiles: "
                           f"{', '.join(PROFILES)}") from None


def with_overrides(profile: Profile, **kwargs: Any) -> Profile:
    """A copy with some sizes changed (used by measurements, never by published entries)."""
    return replace(profile, **{k: v for k, v in kwargs.items() if v is not None})
