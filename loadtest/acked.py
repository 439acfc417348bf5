"""The acked consumer of ``queue --ack explicit``: a lean wsproto consumer of an acked queue
channel that acks every job as soon as it has read it.

It asks for the ``triorelay.v1`` framing, checks that the first frame is an acked queue's
``subscribed`` (:mod:`loadtest.jobframes`), then for each read: every job of the read is
acked in one write (one ack frame per job, all in one ``send_all``), and only then recorded,
with its delivery latency (read time) and its ack latency (the moment that write returned),
both from the job's scheduled send time. The relay holds back past ``max_in_flight`` jobs not
acked, so a consumer that acks late slows itself down: the ack is part of the throughput.
"""

from __future__ import annotations

import time

import trio

from loadtest.clients import DeliveryCounter, DeliveryRecorder, Headers, Stopper
from loadtest.jobframes import (
    REFUSED,
    JobFrame,
    JobFrameError,
    ack,
    read_frame,
    read_subscribed,
)
from loadtest.lean import consuming, open_counted
from loadtest.replay import SUBPROTOCOL
from loadtest.stats import RoleStats


async def consume_acked(
    url: str,
    run_id: str,
    stats: RoleStats,
    counter: DeliveryCounter,
    stopper: Stopper,
    *,
    connect_timeout_s: float = 10.0,
    headers: Headers = (),
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`~loadtest.lean.consume_lean`, acking each job (see the module).

    A channel that is not an acked queue, or a frame that is no job, ends this consumer with
    an error noted in ``stats`` (the run is flagged ``errors``).
    """
    recorder = DeliveryRecorder(run_id, stats, counter)
    lean = await open_counted(
        url,
        connect_timeout_s=connect_timeout_s,
        headers=headers,
        stats=stats,
        what="acked consumer",
        task_status=task_status,
        subprotocols=(SUBPROTOCOL,),
    )
    if lean is None:
        return
    counters = stats.counters
    subscribed = False
    async with consuming(lean, recorder, stats, stopper, "acked consumer"):
        try:
            if lean.subprotocol != SUBPROTOCOL:
                raise JobFrameError(f"the server did not accept the {SUBPROTOCOL} framing")
            while True:
                frames = await lean.receive_messages()
                read_ns = time.monotonic_ns()
                acks: list[str] = []
                payloads: list[str | bytes] = []
                for frame in frames:
                    if not subscribed:
                        read_subscribed(frame)
                        subscribed = True
                        continue
                    job = read_frame(frame)
                    if isinstance(job, JobFrame):
                        acks.append(ack(job.delivery_id))
                        payloads.append(job.payload)
                        counters.jobs_redelivered += job.deliveries > 1
                    elif job == REFUSED:
                        counters.jobs_refused += 1
                if acks:
                    await lean.send_texts(acks)
                    counters.jobs_acked += len(acks)
                    recorder.record(payloads, read_ns, acked_ns=time.monotonic_ns())
        except JobFrameError as exc:
            stats.note_error(f"acked consumer: {exc}")
