"""Built-in handlers for msearch's media task types (the `media` extra: Pillow, and ffmpeg).

`file_scan` finds the images, videos and recordings under a folder and queues each file's pipeline;
`thumbnail_generate`, `preview_generate` and `*_preprocess` write what they make into a cache under
the state folder, named by the content's digest, so that a file renamed or copied is not redone.
"""

from __future__ import annotations

# The types these handlers serve, and where each is (see msearchd.handlers.BUILTIN).
HANDLERS: dict[str, str] = {
    "file_scan": "msearchd.handlers.media.scan:run",
    "thumbnail_generate": "msearchd.handlers.media.thumbnail:run",
    "preview_generate": "msearchd.handlers.media.preview:run",
    "image_preprocess": "msearchd.handlers.media.preprocess:image",
    "video_preprocess": "msearchd.handlers.media.preprocess:video",
    "audio_preprocess": "msearchd.handlers.media.preprocess:audio",
}

INSTALL_HINT = "the media task types need the media extra: pip install 'msearchd[media]'"
