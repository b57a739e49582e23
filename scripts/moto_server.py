"""moto's standalone server (S3 + SQS) with one fix to its SQS queues.

moto 5.2.5's `Queue.delete_message` copies the queue's message list without
the lock `add_message` appends under, then assigns the copy back: a message
sent by another request thread while a delete walks the list is dropped,
though its SendMessage answered success. Real SQS never drops an
acknowledged send, and the suite counts every job (2,000 jobs through two
workers while the producer keeps sending): one job vanished this way in a
CI run. `serialise_deletes` makes the delete hold that lock.
tests/tools/moto_delete_race.py shows the loss without it and none with it.

Usage: python scripts/moto_server.py [moto_server's arguments]
"""

import functools
import sys

import moto.sqs.models as sqs_models


def serialise_deletes():
    """Makes `Queue.delete_message` hold the queue's message lock."""
    delete = sqs_models.Queue.delete_message
    if getattr(delete, "serialised", False):
        return

    @functools.wraps(delete)
    def delete_message(self, receipt_handle):
        with self._messages_lock:
            return delete(self, receipt_handle)

    delete_message.serialised = True
    sqs_models.Queue.delete_message = delete_message


if __name__ == "__main__":
    serialise_deletes()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
