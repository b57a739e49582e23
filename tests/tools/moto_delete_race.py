"""Races on one moto queue must lose no message.

moto's `Queue.delete_message` walks the queue's message list and assigns a
copy without the deleted message back. Two interleavings lose a message:
- a second delete assigns its own copy during the walk and a send then
  appends to that copy: the first delete's assignment drops the sent
  message (and brings the second's deleted one back);
- a receive moves a message the walk has passed to the dead-letter queue:
  the list shifts under the walk, which skips the next message, and the
  copy leaves it out.
Each is forced in-process: a hook in the delete's walk runs the racer from
another thread and gives it half a second. Run with moto as installed and
with scripts/moto_server.py's `lock_queue_changes`; prints, for each race
and each run, the bodies left in the queue (and in the dead-letter queue).
Used by tests/aws/sqs.rs.
"""

import json
import os
import sys
import threading

import moto.sqs.models as sqs_models
from moto.sqs.models import sqs_backends

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../scripts"))
import moto_server  # noqa: E402

BACKEND = sqs_backends["123456789012"]["us-east-1"]


def delete_racing(name, handle, racer):
    """Deletes by `handle`, running `racer` when the delete's walk (after
    its validity scan) reaches the message being deleted."""
    check = sqs_models.Message.had_receipt_handle
    thread = threading.Thread(target=racer)
    seen = []

    def hooked(message, h):
        if threading.current_thread() is not thread and message.receipt_handle == handle:
            seen.append(h)
            if len(seen) == 2:
                thread.start()
                # Unlocked, the racer finishes now, mid-walk; locked, it
                # waits for the delete's lock, and this times out.
                thread.join(0.5)
        return check(message, h)

    sqs_models.Message.had_receipt_handle = hooked
    try:
        BACKEND.delete_message(name, handle)
    finally:
        sqs_models.Message.had_receipt_handle = check
    thread.join()


def bodies(name):
    return sorted(m.body for m in BACKEND.get_queue(name)._messages)


def two_deletes_and_a_send(name):
    """Deletes "a" and "c" and sends "b", racing: only "b" is right."""
    BACKEND.create_queue(name)
    for body in ("a", "c"):
        BACKEND.send_message(name, body)
    handles = {m.body: m.receipt_handle for m in BACKEND.receive_message(name, 10, 0, 30)}

    def racer():
        BACKEND.delete_message(name, handles["c"])
        BACKEND.send_message(name, "b")

    delete_racing(name, handles["a"], racer)
    return {"queue": bodies(name)}


def a_delete_and_a_dead_letter_move(name):
    """Deletes "a" while a receive moves "x" (received before, at
    `maxReceiveCount` 1) to the dead-letter queue and receives "y": "y"
    stays in the queue, in flight, and "x" is in the dead-letter queue."""
    dlq = BACKEND.create_queue(name + "-dlq")
    BACKEND.create_queue(
        name,
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq.queue_arn, "maxReceiveCount": 1}),
    )
    for body in ("x", "a", "y"):
        BACKEND.send_message(name, body)
    # "a" received for its handle; "x" received once and visible again.
    (x,) = BACKEND.receive_message(name, 1, 0, 30)
    (a,) = BACKEND.receive_message(name, 1, 0, 30)
    assert (x.body, a.body) == ("x", "a"), (x.body, a.body)
    BACKEND.change_message_visibility(name, x.receipt_handle, 0)
    delete_racing(name, a.receipt_handle, lambda: BACKEND.receive_message(name, 1, 0, 30))
    return {"queue": bodies(name), "dead": bodies(name + "-dlq")}


def races(tag):
    return {
        "two_deletes_and_a_send": two_deletes_and_a_send("sends-" + tag),
        "a_delete_and_a_dead_letter_move": a_delete_and_a_dead_letter_move("moves-" + tag),
    }


if __name__ == "__main__":
    unlocked = races("unlocked")
    moto_server.lock_queue_changes()
    print(json.dumps({"unlocked": unlocked, "locked": races("locked")}))
