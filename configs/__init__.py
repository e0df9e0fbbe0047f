"""Presets: partial TrainConfigs (JSON) layered over the defaults by `patchrank train --preset NAME`."""
