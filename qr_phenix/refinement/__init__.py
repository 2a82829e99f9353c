"""Refinement drivers (X-ray, real space, geometry) built on mmtbx/cctbx."""
