"""Real human speech with transcripts, parsed from game/education packages.

- Fish Fillets NG: ``sound/<level>/<lang>/<id>.ogg`` (package ``fillets-ng-data-<lang>``) and transcripts in
  ``script/<level>/*dialogs_<lang>.lua`` (package ``fillets-ng-data``) as
  ``dialogId("<id>", "<font>", "English")`` followed by ``dialogStr("native")``. The font names the
  character: ``font_big`` is the big fish, ``font_small`` the small fish, others are minor characters.
- Tux Paint stamps: ``<stem>_desc[_<lang>].ogg`` next to ``<stem>.txt``, whose first line is English and
  whose other lines are ``<locale>.utf8=<text>``. One voice per language, as far as can be heard.
- KLettres: ``<lang>/sounds.xml`` lists ``<sound name="..." file="<lang>/alpha/a.ogg"/>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import soundfile as sf

from tokenlm.corpus.manifest import Clip

_LUA_STR = r'"((?:[^"\\]|\\.)*)"'
_DIALOG_ID = re.compile(rf"dialogId\(\s*{_LUA_STR}\s*,\s*{_LUA_STR}\s*,\s*{_LUA_STR}\s*\)")
_DIALOG_STR = re.compile(rf"^\s*dialogStr\(\s*{_LUA_STR}\s*\)")
_LUA_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "'": "'", "\\": "\\"}
FILLETS_FONTS = {"font_big": "v", "font_small": "m"}  # the two fish; minor characters keep the font name


def _lua_unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _LUA_ESCAPES.get(m.group(1), m.group(1)), s)


def parse_fillets_dialogs(text: str) -> dict[str, dict]:
    """Lua dialog file text -> {id: {"font", "text_en", "text"}}; ``text`` is None when untranslated."""
    out: dict[str, dict] = {}
    last = None
    for line in text.splitlines():
        m = _DIALOG_ID.search(line)
        if m:
            last = _lua_unescape(m.group(1))
            out[last] = {"font": m.group(2), "text_en": _lua_unescape(m.group(3)).strip(), "text": None}
            continue
        m = _DIALOG_STR.search(line)
        if m and last is not None:
            out[last]["text"] = _lua_unescape(m.group(1)).strip()
            last = None
    return out


def fillets_speaker(lang: str, font: str) -> str:
    code = FILLETS_FONTS.get(font, font.removeprefix("font_"))
    return f"fillets-{lang}-{code}"


def fillets_clips(data_dir: Path, audio_dir: Path, lang: str) -> list[Clip]:
    """Clips of one Fillets language. ``data_dir``/``audio_dir``: the ``fillets-ng`` share folders holding
    ``script/`` and ``sound/``. Audio without a transcript line is skipped (sound effects)."""
    clips = []
    for level_dir in sorted((audio_dir / "sound").glob(f"*/{lang}")):
        level = level_dir.parent.name
        lines: dict[str, dict] = {}
        for lua in sorted((data_dir / "script" / level).glob(f"*dialogs_{lang}.lua")):
            lines.update(parse_fillets_dialogs(lua.read_text(encoding="utf-8", errors="replace")))
        for ogg in sorted(level_dir.glob("*.ogg")):
            line = lines.get(ogg.stem)
            if line is None or not line["text"]:
                continue
            speaker = fillets_speaker(lang, line["font"])
            clips.append(
                _clip(
                    f"fillets-{lang}/{level}/{ogg.stem}",
                    ogg,
                    lang,
                    speaker,
                    line["text"],
                    line["text_en"],
                    source=f"fillets-ng-data-{lang}",
                )
            )
    return clips


def _clip(id, path: Path, lang, speaker, text, text_en, source, labels=()) -> Clip:
    info = sf.info(str(path))
    return Clip(
        id=id,
        path=str(path.resolve()),
        duration=round(info.duration, 4),
        sample_rate=info.samplerate,
        kind="speech_real",
        language=lang,
        speaker=speaker,
        text=text,
        text_en=text_en,
        labels=tuple(labels),
        source=source,
        group=speaker,
    )


_DESC = re.compile(r"^(?P<stem>.+)_desc(?:_(?P<lang>[a-z]{2,3}(?:_[A-Za-z]{2})?))?\.ogg$")


def parse_tuxpaint_txt(text: str) -> dict[str, str]:
    """Stamp description file -> {locale: text}; the untagged first line is English (key ``"en"``)."""
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z_@]+)\.utf8=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif i == 0:
            out["en"] = line
    return out


def tuxpaint_speech_clips(stamps_dir: Path) -> list[Clip]:
    """Spoken stamp descriptions under ``stamps_dir`` (``.../tuxpaint/stamps``); one speaker per language."""
    clips = []
    for ogg in sorted(stamps_dir.rglob("*_desc*.ogg")):
        m = _DESC.match(ogg.name)
        if not m:
            continue
        locale = m.group("lang") or "en"
        txt = ogg.with_name(m.group("stem") + ".txt")
        texts = parse_tuxpaint_txt(txt.read_text(encoding="utf-8", errors="replace")) if txt.is_file() else {}
        lang = locale.split("_")[0]
        text = texts.get(locale) or texts.get(lang)
        rel = ogg.relative_to(stamps_dir).with_suffix("")
        clips.append(
            _clip(
                f"tuxpaint/{rel}",
                ogg,
                lang,
                f"tuxpaint-{lang}",
                text,
                texts.get("en"),
                source="tuxpaint-stamps-default",
                labels=(m.group("stem").lower(),),
            )
        )
    return clips


def klettres_clips(share_dir: Path) -> list[Clip]:
    """Letters and syllables from ``share_dir`` (``/usr/share/klettres``): one ``sounds.xml`` per language."""
    clips, seen = [], set()
    for xml in sorted(share_dir.glob("*/sounds.xml")):
        root = ET.fromstring(xml.read_text(encoding="utf-8", errors="replace"))
        for lang_el in root.iter("language"):
            code = lang_el.get("code") or xml.parent.name
            lang = code.split("_")[0]
            for section in lang_el:
                for snd in section.iter("sound"):
                    path = share_dir / (snd.get("file") or "")
                    if not path.is_file() or path in seen:  # a few files are listed twice
                        continue
                    seen.add(path)
                    rel = path.relative_to(share_dir).with_suffix("")
                    name = snd.get("name")
                    clips.append(
                        _clip(
                            f"klettres/{rel}",
                            path,
                            lang,
                            f"klettres-{code}",
                            name,
                            None,
                            source="klettres-data",
                            labels=(section.tag,),
                        )
                    )
    return clips
