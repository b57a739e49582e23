"""Two deletes and a send racing on one moto queue must lose nothing.

moto's `Queue.delete_message` walks the queue's message list and assigns a
copy without the deleted message back. When a second delete assigns its own
copy during that walk and a send then appends to it, the first delete's
assignment drops the sent message (and brings the second's deleted one
back). Here that interleaving is forced in-process: a hook in the first
delete's walk runs the second delete and the send from another thread. Run
once with moto as installed and once with scripts/moto_server.py's
`serialise_deletes`; prints {"unpatched": [...], "patched": [...]}, the
bodies left in each queue (only "b" is right). Used by tests/aws/sqs.rs.
"""

import json
import os
import sys
import threading

import moto.sqs.models as sqs_models
from moto.sqs.models import sqs_backends

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../scripts"))
import moto_server  # noqa: E402


def left_after_racing_deletes(name):
    """Deletes "a" and "c" and sends "b", racing; returns the bodies left."""
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue(name)
    backend.send_message(name, "a")
    backend.send_message(name, "c")
    handles = {m.body: m.receipt_handle for m in backend.receive_message(name, 10, 0, 30)}

    def delete_c_then_send_b():
        backend.delete_message(name, handles["c"])
        backend.send_message(name, "b")

    check = sqs_models.Message.had_receipt_handle
    racer = threading.Thread(target=delete_c_then_send_b)

    def hooked(message, handle):
        # The first call is the delete's validity scan; the second is its
        # walk, which builds the copy it assigns back.
        hooked.calls += 1
        if hooked.calls == 2:
            racer.start()
            # Unserialised, the racer finishes now, mid-walk; serialised,
            # it waits for this delete's lock, and this times out.
            racer.join(0.5)
        return check(message, handle)

    hooked.calls = 0
    sqs_models.Message.had_receipt_handle = hooked
    try:
        backend.delete_message(name, handles["a"])
    finally:
        sqs_models.Message.had_receipt_handle = check
    racer.join()
    return sorted(m.body for m in backend.get_queue(name)._messages)


if __name__ == "__main__":
    unpatched = left_after_racing_deletes("race-unpatched")
    moto_server.serialise_deletes()
    patched = left_after_racing_deletes("race-patched")
    print(json.dumps({"unpatched": unpatched, "patched": patched}))
