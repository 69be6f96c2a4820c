"""``imgsync restore``: put backed-up images back on the portal, or into a folder.

The data flows one way, each step in its own file:

1. :mod:`.select`: the selection (pairs, CSV files, products, ``--missing --since``) becomes the recorded
   rows it names, every one validated before the first request (exit 2 naming the place).
2. :mod:`.target`: what each target product holds now: ``catalog.productImage.list``, and the sha256 of each
   current image (recorded and unchanged, or downloaded and hashed: a real run backs it up as sync would).
3. :mod:`.plan`: :func:`~.plan.decide_restore`, pure: ``restore``, ``present``, ``no backup``,
   ``product gone``, ``unmatched``, ``slot taken`` per image. A dry run prints this and stops.
4. :mod:`.backup`: the bytes to send, read from dest or S3 and checked against the recorded sha256.
5. :mod:`.pipeline`: the journal row (``restores``, ``sent``) committed, then ``catalog.productImage.add``
   (packed into ``batch`` requests bounded in size and time), then the new image downloaded and compared;
   adds without a sure answer are looked for on the product before anything is sent again.
6. :mod:`.summary`: the counts and the JSON object; :mod:`.folder`: ``--to DIR``; :mod:`.runner`:
   ``run_restore(settings, request)``, the whole command as one call.
"""

from .runner import RestoreRequest, run_restore
from .summary import RestoreSummary

__all__ = ["RestoreRequest", "RestoreSummary", "run_restore"]
