"""Attachments of journal entries: photos, voice notes and PDFs, up to ATTACHMENT_MAX_BYTES.

- ``lifecycle.py``: declare (``pending``, an upload URL), complete (``ready`` once the object
  has the declared size), download URLs, delete; the objects of a deleted entry.
- ``local_transfer.py``: the local store's signed upload and download URLs.
- ``upload_sweeper.py``: removes attachments declared but never uploaded.

What the rules are in prose, and the HTTP flow, is in ``innera/api/attachments.py``.
"""

from innera.attachments.lifecycle import (
    Attachment,
    AttachmentNotReady,
    Download,
    Upload,
    UploadIncomplete,
    complete,
    declare,
    delete,
    delete_entry_objects,
    download,
    entry_attachments,
)
from innera.attachments.local_transfer import LocalDownload, open_download, receive_upload
from innera.attachments.upload_sweeper import run_upload_sweeper, sweep_once

__all__ = [
    "Attachment",
    "AttachmentNotReady",
    "Download",
    "LocalDownload",
    "Upload",
    "UploadIncomplete",
    "complete",
    "declare",
    "delete",
    "delete_entry_objects",
    "download",
    "entry_attachments",
    "open_download",
    "receive_upload",
    "run_upload_sweeper",
    "sweep_once",
]
