"""Attacks: untargeted L-inf PGD and the targeted explanation manipulations."""
