"""The one table of words that introduce a secret ("password: ...", "pin 4711"), per language.

The password detector, the scrubber's prefilter and hints, and the bot's streaming hold-back
all read it, so a keyword added here is looked for everywhere at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretKeyword:
    """A word that may introduce a secret, in one language.

    `stem` is what every spelling starts with (the cheap hints search for it); `spellings` is
    the regular expression of its whole-word forms the detector accepts. A `strong` keyword
    names a password, whose secret may be any word after it; after a weak one (PIN, code) only
    something with a digit counts, and a digit already passes the prefilter. `example` is one
    spelling as written in a chat (the tests write a secret after each).
    """

    stem: str
    spellings: str
    strong: bool
    example: str


SECRET_KEYWORDS: tuple[SecretKeyword, ...] = (
    SecretKeyword(
        "pass", r"passwords?|passcode|passphrase|passwd|pass", strong=True, example="password"
    ),
    SecretKeyword("pwd", r"pwd", strong=True, example="pwd"),
    SecretKeyword("парол", r"пароль|пароля|паролем|пароли", strong=True, example="пароль"),
    SecretKeyword("пасс", r"пасс|пассворд", strong=True, example="пассворд"),
    SecretKeyword("كلمة", r"كلمة\s+(?:السر|المرور)", strong=True, example="كلمة السر"),
    SecretKeyword("کلمه", r"کلمه\s+(?:عبور|رمز)", strong=True, example="کلمه عبور"),
    SecretKeyword("رمز", r"رمز\s+عبور", strong=True, example="رمز عبور"),
    SecretKeyword("گذرواژه", r"گذرواژه", strong=True, example="گذرواژه"),
    SecretKeyword("پسورد", r"پسورد", strong=True, example="پسورد"),
    SecretKeyword("pin", r"pin\s*code|pin", strong=False, example="pin code"),
    SecretKeyword("otp", r"otp", strong=False, example="otp"),
    SecretKeyword("code", r"code", strong=False, example="code"),
    SecretKeyword("пин", r"пин-?код|пин", strong=False, example="пин-код"),
    SecretKeyword("код", r"кода?", strong=False, example="код"),
    SecretKeyword("کد", r"کد", strong=False, example="کد"),
    SecretKeyword("رمز", r"رمز\w{0,2}", strong=False, example="رمز"),
)


def keyword_stems(strong_only: bool = False) -> list[str]:
    """The table's stems (of password keywords only, with `strong_only`), each once."""
    return list(dict.fromkeys(k.stem for k in SECRET_KEYWORDS if k.strong or not strong_only))


def spelled_three_ways(stems: list[str]) -> str:
    """An alternation of the stems spelled lower, Capitalized and UPPER.

    Case-sensitive alternatives let sre skip ahead by first character; one case-insensitive
    alternation is several times slower, and the scrubber runs on every message.
    """
    variants = [v for stem in stems for v in (stem, stem.capitalize(), stem.upper())]
    return "|".join(re.escape(variant) for variant in dict.fromkeys(variants))


# Whether the password detector runs at all on a text that passed the prefilter.
KEYWORD_HINT_RE = re.compile(spelled_three_ways(keyword_stems()))
# The detector's keywords, whole words, strong ones first (the `strong` group says which).
KEYWORD_RE = re.compile(
    r"(?<!\w)(?:(?P<strong>"
    + "|".join(k.spellings for k in SECRET_KEYWORDS if k.strong)
    + ")|"
    + "|".join(k.spellings for k in SECRET_KEYWORDS if not k.strong)
    + r")(?!\w)",
    re.IGNORECASE,
)
# Any keyword stem in any case, inside a word too: the bot holds a streamed reply back from it.
ANY_KEYWORD_RE = re.compile("|".join(map(re.escape, keyword_stems())), re.IGNORECASE)
