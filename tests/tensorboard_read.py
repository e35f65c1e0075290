"""Reads the TensorBoard event files under a folder with TensorBoard's own loader, for
tests/tensorboard.rs: prints {tag: [[step, value], ...]} as JSON."""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
json.dump(
    {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]},
    sys.stdout,
)
