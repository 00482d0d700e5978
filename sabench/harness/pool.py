"""Slots: measuring a run's points on several devices at once (`sabench run --devices`).

A slot is one device: a thread that takes the next unit of work from a shared queue and runs
its items one after another, each item one point process pinned to the slot's GPU. A unit is a
round's cell (one batch size and seq_len, every variant): a variant and its baseline are then
measured on the same GPU, back to back, in every round. With one slot the items run in this
thread, in the order given, exactly as a run without --devices.

The work function is the sweep's: it measures without holding anything and records under the
sweep's lock. Ctrl-C (raised in this thread: the point processes ignore SIGINT) stops the
dispatch, ends the point processes still running (and any a slot started meanwhile) and raises
KeyboardInterrupt once every slot has returned; `stop` tells the work function to drop what
those processes left. A bug in a slot stops the others too and is raised here.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from sabench.harness import interrupts
from sabench.harness.launch import end_point_processes


@dataclass(frozen=True)
class Slot:
    """Where a slot's point processes run: the user's device id, its GPU and its own work directory."""
    id: int
    gpu: Optional[str]  # CUDA_VISIBLE_DEVICES of its point processes; None: not pinned (no --devices)
    workdir: Path


def cell_units(todo: Sequence, by_cell: bool) -> list:
    """`todo`'s (round, point) pairs as units: one per (round, batch size, seq_len) in order of first
    appearance when `by_cell`, else one per pair (the order of `todo` kept exactly)."""
    if not by_cell:
        return [[x] for x in todo]
    units: dict = {}
    for k, p in todo:
        units.setdefault((k, p.batch_size, p.seq_len), []).append((k, p))
    return list(units.values())


class Pool:
    def __init__(self, slots: Sequence[Slot]):
        if not slots:
            raise ValueError("a pool needs at least one slot")
        self.slots = tuple(slots)
        self.stop = threading.Event()
        self._interrupted = False
        self._error: Optional[BaseException] = None

    def run(self, units: Sequence[list], work: Callable) -> None:
        """work(item, slot) for every item of every unit, each unit on one slot."""
        if len(self.slots) == 1:
            slot = self.slots[0]
            for unit in units:
                for item in unit:
                    work(item, slot)
            return
        q: queue.SimpleQueue = queue.SimpleQueue()
        for unit in units:
            q.put(unit)
        threads = [threading.Thread(target=self._slot, args=(s, q, work), name=f"sabench-slot-{s.id}", daemon=True)
                   for s in self.slots]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            self._interrupted = True
            with interrupts.ignored():  # a second Ctrl-C: the slots are already stopping
                for t in threads:
                    while t.is_alive():  # a slot may have started a process just before the halt
                        self._halt()
                        t.join(0.2)
        if self._error is not None:
            raise self._error
        if self._interrupted:
            raise KeyboardInterrupt

    def _slot(self, slot: Slot, q, work) -> None:
        try:
            while not self.stop.is_set():
                try:
                    unit = q.get_nowait()
                except queue.Empty:
                    return
                for item in unit:
                    if self.stop.is_set():
                        return
                    work(item, slot)
        except KeyboardInterrupt:  # the work function says the run is interrupted
            self._interrupted = True
            self._halt()
        except BaseException as e:  # a bug: stop everything, raise it in the caller
            if self._error is None:
                self._error = e
            self._halt()

    def _halt(self) -> None:
        """No more dispatch; end the point processes still running (their remains are dropped)."""
        self.stop.set()
        end_point_processes()
