"""moto's standalone server (S3 + SQS) with its SQS queue changes locked.

moto 5.2.5 changes a queue's message list in three places, and only
`add_message` (every send) holds the queue's lock:
- `Queue.delete_message` walks the list, builds a copy without the deleted
  message and assigns the copy back. A send that lands in another copy
  meanwhile (a second delete's) is dropped by the assignment, though its
  SendMessage answered success.
- `SQSBackend.receive_message` removes a message that reached its
  `maxReceiveCount` from the list (to the dead-letter queue) in place; a
  delete walking the list at that moment skips the message after it, which
  its copy then leaves out.
Real SQS never drops an acknowledged send, and the suite counts every job
(2,000 jobs through two workers while the producer keeps sending): one job
vanished the first way in a CI run. `lock_queue_changes` makes both hold
the lock (a receive's long-poll wait releases it, as moto's own wait does).
tests/tools/moto_delete_race.py forces each interleaving: messages lost
without this, none with it.

Usage: python scripts/moto_server.py [moto_server's arguments]
"""

import functools
import sys

import moto.sqs.models as sqs_models


def lock_queue_changes():
    """Makes `delete_message` and `receive_message` hold the queue's lock."""
    queue, backend = sqs_models.Queue, sqs_models.SQSBackend
    if getattr(queue.delete_message, "locked", False):
        return
    delete, receive = queue.delete_message, backend.receive_message

    @functools.wraps(delete)
    def delete_message(self, receipt_handle):
        with self._messages_lock:
            return delete(self, receipt_handle)

    @functools.wraps(receive)
    def receive_message(self, queue_name, *args, **kwargs):
        with self.get_queue(queue_name)._messages_lock:
            return receive(self, queue_name, *args, **kwargs)

    delete_message.locked = True
    queue.delete_message = delete_message
    backend.receive_message = receive_message


if __name__ == "__main__":
    lock_queue_changes()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
