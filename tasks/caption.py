"""Audio captioning: ``bos <caption> [codec frames] sos_text -> [caption] eos``.

Captions are written from what the corpus knows about a clip (``caption_for``): sound-event clips carry
their caption; speech says who speaks which language; music names its instruments or kind; a mixture names
both of its sources. Every caption says which broad class the audio is (speech, music or which sounds).
"""

from __future__ import annotations

from .base import Example, TextTarget, register

LANGUAGE_NAMES = {
    "ar": "Arabic", "be": "Belarusian", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "fr": "French", "he": "Hebrew",
    "hu": "Hungarian", "it": "Italian", "lt": "Lithuanian", "ml": "Malayalam", "nb": "Norwegian",
    "nds": "Low German", "nl": "Dutch", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tn": "Tswana",
    "uk": "Ukrainian",
}
ORCHESTRAL_SOURCES = ("wesnoth-1.16-music",)


def speech_caption(kind: str | None, language: str | None) -> str:
    who = "A synthetic voice" if kind == "speech_synthetic" else "A person"
    return f"{who} speaks {LANGUAGE_NAMES.get(language or '', 'an unknown language')}."


def music_caption(labels: tuple[str, ...]) -> str:
    """``labels``: ("music", source, [instrument])."""
    source = labels[1] if len(labels) > 1 else ""
    if source.startswith("music21") and len(labels) > 2:
        return f"{labels[2].capitalize()} music."
    return "Orchestral game music." if source in ORCHESTRAL_SOURCES else "Game music."


def caption_for(ex: Example) -> str | None:
    """The caption of a corpus clip, or None when nothing is known to write one from."""
    info = ex.info
    if ex.kind == "sounds":
        return ex.text or None
    if ex.kind in ("speech_real", "speech_synthetic"):
        return speech_caption(ex.kind, ex.language)
    if ex.kind == "music":
        return music_caption(ex.labels)
    if ex.kind == "mixture":
        mix = info.get("mixture_type") or (ex.labels[0] if ex.labels else "")
        speech = speech_caption(None, ex.language)[:-1]
        if mix == "speech+music":
            return f"{speech} over music."
        if mix == "speech+sound":
            return f"{speech} while {ex.labels[-1]} can be heard."
        if mix == "speech+speech":
            return "Two people speak at once."
        return ex.text or None  # sound+sound: the corpus wrote it from both labels
    return None


class Caption(TextTarget):
    name = "caption"
    says_language = False
    kinds = ("speech_real", "speech_synthetic", "music", "sounds", "mixture")
    longest = 0.8

    def text_of(self, ex: Example) -> str:
        return caption_for(ex)

    def accepts(self, ex: Example) -> bool:
        return ex.kind in self.kinds and bool(caption_for(ex))

    def condition(self, ctx, ex: Example, **kw):
        return ctx.prompt(self.name).codec(ctx.codec_ids(ex.codes)).special("sos_text")


register(Caption())
