"""Generated documents where something stated once must be used later.

Every kind of probe is one function `(rng, filler, n_chars) -> Probe`: a prompt that ends
where the answer starts, the answer text the model must produce, the values a correct
answer must contain (RULER's string_match_all), and the completion that closes the
document for training. Training documents are prompt + completion; evaluation feeds the
prompt alone and scores the greedy continuation. The same code makes both, so what the
model is tested on is exactly what it was trained on, with other values and other filler.

Kinds:
- passkey        Landmark attention's pass key in a haystack, asked for at the end
- niah_single    RULER: "One of the special magic numbers for KEY is: VALUE."
- niah_multikey  RULER: several keys with their values, one of them asked for
- niah_multivalue RULER: one key with several values, all asked for
- kv_recall      4 to 12 several-keys needles close together, every key asked for
- repeat         a span stated once and repeated later (copying, induction heads)
- copy           a long span of random words and numbers written twice: nothing but the
                 first copy predicts the second, so its loss falls only once the model
                 copies from context (the data that makes induction heads form quickly)
- chat           a ChatML conversation: facts stated in early turns, asked for later
- instruct       short ChatML instruction / answer turns
- reasoning      chains of assignments and word problems, thoughts separated by the
                 paragraph break (gistd's thought boundary), ending in "Answer: N"

Held out by construction: every value a probe hides (numbers, names, places, keys) is
drawn from one side of a keyed hash split (`heldout`), training from one side and
evaluation from the other, so no evaluation probe's answer was ever a training answer.
Training draws half its words, names, places and keys from an open vocabulary (the
training books' words, made-up names) beside the lists evaluation draws from: a model that
has only ever answered from a list of ~70 nouns learns to pick one of them, and misses
every held-out noun, however plainly the context states it.
Filler comes from the training books when training and from persuasion.txt (the held-out
book) when evaluating.
"""
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# The ChatML template (the form Hugging Face documents as "chatml"): exported as
# tokenizer.chat_template, and the text render_chat() writes.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THOUGHT = "\n\n"  # gistd's thought boundary (a paragraph break)

KINDS = ["passkey", "niah_single", "niah_multikey", "niah_multivalue", "repeat", "copy",
         "chat", "instruct", "reasoning", "arith", "kv_recall"]
# share of each kind in the training mix
WEIGHTS = {"passkey": 0.12, "niah_single": 0.12, "niah_multikey": 0.10,
           "niah_multivalue": 0.06, "repeat": 0.10, "chat": 0.24, "instruct": 0.08,
           "reasoning": 0.18}


def heldout(value):
    """True for the values kept for evaluation (one in eight, by a keyed hash)."""
    return zlib.crc32(b"gistd-heldout:" + str(value).encode()) % 8 == 0


@dataclass
class Probe:
    kind: str
    prompt: str            # ends where the answer starts
    answer: str            # what a correct greedy continuation says
    values: list           # strings that must all appear in the answer (string_match_all)
    completion: str        # answer + whatever closes the document (training only)
    depth: float = 0.0     # where the (first) fact stands, as a share of the prompt
    meta: dict = field(default_factory=dict)
    # training only: further answers the completion gives, (start, end) offsets in text
    later_answers: list = field(default_factory=list)

    @property
    def text(self):
        return self.prompt + self.completion


def render_chat(messages, add_generation_prompt=False):
    """The ChatML text of [(role, content)], as CHAT_TEMPLATE renders it."""
    out = "".join(f"{IM_START}{r}\n{c}{IM_END}\n" for r, c in messages)
    return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def string_match_all(said, values):
    """RULER's score: 1 when every value occurs in the answer, else 0 (case-insensitive)."""
    s = said.lower()
    return 1.0 if all(str(v).lower() in s for v in values) else 0.0


# ------------------------------------------------------------------ values and filler

class Filler:
    """Haystack text: paragraph-aligned slices of some books."""

    def __init__(self, texts):
        self.texts = [t for t in texts if len(t) > 2000]
        if not self.texts:
            raise ValueError("filler needs a text of at least 2000 characters")
        sizes = np.array([len(t) for t in self.texts], dtype=np.float64)
        self.p = sizes / sizes.sum()
        self._words = None

    def words(self):
        """The lowercase words of 4 to 10 letters the texts use at least twice, sorted: the
        open vocabulary training draws word values from (built on first use)."""
        if self._words is None:
            counts = Counter(re.findall(r"\b[a-z]{4,10}\b", "\n".join(self.texts)))
            self._words = sorted(w for w, c in counts.items() if c >= 2)
        return self._words

    def take(self, rng, n_chars):
        """About n_chars of text from a random place, whitespace-normalised to single
        spaces inside paragraphs (so a slice reads as running prose)."""
        if n_chars <= 0:
            return ""
        t = self.texts[rng.choice(len(self.texts), p=self.p)]
        n_chars = min(n_chars, len(t) - 1)
        o = int(rng.integers(0, len(t) - n_chars))
        s = t[o:o + n_chars]
        sp = s.find(" ")
        s = s[sp + 1:] if 0 <= sp < 40 else s
        s = " ".join(s.split())
        return s


OPEN = 0.5  # the share of training's words, names, places and keys drawn from outside the lists
OPEN_MIN_WORDS = 1000  # a filler with a smaller vocabulary is no open vocabulary
# the syllables of made-up names and places
SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"] + ["an", "el", "or", "is", "um"]


class Values:
    """Draws values on one side of the held-out split. When training (and given the filler,
    whose texts are the open vocabulary), word, name, place and key draw a share OPEN of their
    values from outside the lists evaluation uses; when evaluating they draw exactly as the
    lists alone would, so the held-out probes do not depend on the open vocabulary."""

    def __init__(self, rng, evaluation, filler=None):
        self.rng, self.eval = rng, evaluation
        self.filler = None if evaluation else filler
        if self.filler is not None and len(self.filler.words()) < OPEN_MIN_WORDS:
            self.filler = None

    def _open(self):
        return self.filler is not None and self.rng.random() < OPEN

    def _draw(self, make, exclude, error, split=True):
        """The first of up to 1000 values make() gives that is on this side of the split
        (unless split=False) and not in exclude; ValueError(error) when none is."""
        for _ in range(1000):
            v = make()
            if (not split or self._ok(v)) and v not in exclude:
                return v
        raise ValueError(error)

    def _made_up(self, exclude):
        """A made-up name of 2 or 3 syllables ("Tavoni"), on this side of the split."""
        def make():
            n = int(self.rng.integers(2, 4))
            idx = self.rng.integers(0, len(SYLLABLES), n)
            return "".join(SYLLABLES[int(i)] for i in idx).capitalize()
        return self._draw(make, exclude, "no made-up name left")

    def word(self, pool, exclude=()):
        """A word value: from pool, or (training, a share OPEN) any word of the books."""
        if self._open():
            return self.pick(self.filler.words(), exclude)
        return self.pick(pool, exclude)

    def name(self, exclude=()):
        """A first name: from FIRST_NAMES, or (training, a share OPEN) a made-up one."""
        return self._made_up(exclude) if self._open() else self.pick(FIRST_NAMES, exclude)

    def place(self, exclude=()):
        """A place: from PLACES, or (training, a share OPEN) a made-up one."""
        return self._made_up(exclude) if self._open() else self.pick(PLACES, exclude)

    def _ok(self, v):
        return heldout(v) == self.eval

    def pick(self, pool, exclude=(), split=True):
        """A value of the pool; split=False for the small pools of kinds (colours, pets,
        jobs, foods) that every probe shares: their probes differ in the other values."""
        return self._draw(lambda: pool[int(self.rng.integers(0, len(pool)))], exclude,
                          "no value left on this side of the split", split)

    def number(self, digits, exclude=()):
        lo, hi = 10 ** (digits - 1), 10 ** digits
        return self._draw(lambda: str(int(self.rng.integers(lo, hi))), exclude, "no number left")

    def key(self, exclude=()):
        adjectives, nouns = ADJECTIVES, NOUNS
        if self._open():
            adjectives = nouns = self.filler.words()

        def make():
            return f"{adjectives[int(self.rng.integers(0, len(adjectives)))]}-" \
                   f"{nouns[int(self.rng.integers(0, len(nouns)))]}"
        return self._draw(make, exclude, "no key left")


ADJECTIVES = ("able bitter brave bright calm cheap clever cold crisp curly damp dark deep dry "
              "eager early empty faint fancy fierce flat fresh gentle giant glad golden grand "
              "green happy heavy hollow humble icy jolly kind large lazy little loud lucky "
              "mellow merry mighty narrow neat noble odd pale plain polite proud quick quiet "
              "rapid rare rich round royal rusty sharp shiny short shy silent silly slim slow "
              "smooth soft solid sour spare steep stiff sturdy sweet swift tall tame tender "
              "thick tidy tiny tough vast warm wary weak wide wild wise witty young").split()
NOUNS = ("anchor apple arrow badge basket beacon bell blanket bottle bridge bucket button "
         "cabin camera candle canyon carpet castle cedar chair clock cloud comet copper "
         "crystal desert dragon drum eagle engine falcon feather fence field flute forest "
         "fountain garden glacier hammer harbor helmet island jacket kettle ladder lantern "
         "lemon lizard magnet maple marble meadow mirror needle ocean orchard otter paddle "
         "parrot pebble pencil pepper piano pillow planet pocket quarry rabbit ribbon river "
         "rocket saddle salmon shadow shovel spider spoon stable statue tiger tower trumpet "
         "tunnel turtle valley violin wagon walnut whistle window wizard").split()
FIRST_NAMES = ("Ada Alma Amos Anya Arlo Basil Bea Bruno Cass Cleo Colm Dara Dex Edda Eli Elsa "
               "Emil Enzo Esme Ezra Faye Felix Fern Finn Gia Gus Hana Hugo Ida Ines Ira Ivo "
               "Jada Jonas Juno Kai Kira Lars Lena Leo Lila Luca Mae Mara Milo Nell Nico Nina "
               "Noor Olga Omar Otto Pia Quinn Rafe Rhea Rosa Rufus Sade Saul Tess Theo Uma "
               "Vera Wade Wren Yara Yves Zane Zora").split()
PLACES = ("Lisbon Oslo Quito Lima Cairo Dublin Bergen Porto Lyon Graz Turin Malmo Split Cork "
          "Leeds Bath Perth Hobart Austin Denver Boise Tulsa Reno Fresno Tucson Halifax Regina "
          "Quebec Nagoya Osaka Busan Hanoi Manila Jakarta Madras Goa Tunis Rabat Accra Dakar "
          "Lagos Nairobi Kigali Durban Ghent Bruges Delft Basel Bern Krakow Gdansk Riga Tartu "
          "Vilnius Sofia Varna Izmir Tbilisi Baku Almaty Omsk Perm").split()
COLOURS = ("red blue green yellow orange purple violet teal amber crimson scarlet navy "
           "indigo ivory olive maroon turquoise lilac beige silver").split()
FOODS = ("soup pasta rice curry bread cheese apples pears plums figs dates olives noodles "
         "dumplings pancakes porridge salad honey oranges cherries lentils beans").split()
PETS = ("cat dog parrot rabbit hamster tortoise goldfish pony ferret canary lizard").split()
JOBS = ("baker teacher nurse pilot farmer tailor painter plumber chemist sailor "
        "carpenter librarian gardener potter weaver doctor").split()
ITEMS = ("apples pears marbles coins stamps books pencils shells cards buttons eggs "
         "cookies candles ribbons stones").split()


def _split_filler(filler, rng, n_chars, cuts):
    """Filler of about n_chars cut at the given fractions into len(cuts) + 1 pieces."""
    text = filler.take(rng, n_chars)
    words = text.split(" ")
    idx = []
    for c in cuts:  # at the end of a sentence when one ends within 30 words
        i = int(round(c * len(words)))
        j = next((k + 1 for k in range(i - 1, min(i + 29, len(words)))
                  if k >= 0 and words[k][-1:] in ".?!"), i)
        idx.append(max(j, idx[-1] if idx else 0))
    out, prev = [], 0
    for i in idx + [len(words)]:
        out.append(" ".join(words[prev:i]))
        prev = i
    return out


def _join(*parts):
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ retrieval probes

def passkey(rng, filler, n_chars, ev=False):
    v = Values(rng, ev, filler)
    key = v.number(5)
    depth = float(rng.random())
    a, b = _split_filler(filler, rng, n_chars, [depth])
    prompt = _join("There is an important piece of information hidden inside a lot of "
                   "irrelevant text. Find it and memorize it. I will quiz you about it.",
                   a, f"The pass key is {key}. Remember it. {key} is the pass key.", b,
                   "What is the pass key? The pass key is")
    return Probe("passkey", prompt, f" {key}.", [key], f" {key}.\n", depth)


NIAH_INTRO = ("Some special magic {what} are hidden within the following text. Make sure to "
              "memorize them. I will quiz you about the {what} afterwards.")


def _niah_value(v, rng, exclude):
    if rng.random() < 0.6:
        return v.number(7, exclude)
    return v.word(NOUNS, exclude)


def niah_single(rng, filler, n_chars, ev=False):
    v = Values(rng, ev, filler)
    key = v.key()
    val = _niah_value(v, rng, ())
    what = "numbers" if val.isdigit() else "words"
    depth = float(rng.random())
    a, b = _split_filler(filler, rng, n_chars, [depth])
    one = what[:-1]
    prompt = _join(NIAH_INTRO.format(what=what), a,
                   f"One of the special magic {what} for {key} is: {val}.", b,
                   f"What is the special magic {one} for {key} mentioned in the provided "
                   f"text? The special magic {one} for {key} mentioned in the provided text is")
    return Probe("niah_single", prompt, f" {val}.", [val], f" {val}.\n", depth)


def niah_multikey(rng, filler, n_chars, ev=False, n_keys=(2, 4), words=False):
    """RULER's several keys: n_keys (lo, hi) needles, one of them asked for; training asks for
    every other key after it. words: word values (v.word) instead of 7-digit numbers."""
    v = Values(rng, ev, filler)
    n = int(rng.integers(n_keys[0], n_keys[1] + 1))
    keys, vals = [], []
    for _ in range(n):
        keys.append(v.key(keys))
        # a word value is no word of the keys so far: it must come from its needle
        vals.append(v.word(NOUNS, vals + "-".join(keys).split("-")) if words
                    else v.number(7, vals))
    what = "words" if words else "numbers"
    cuts = sorted(float(x) for x in rng.random(n))
    parts = _split_filler(filler, rng, n_chars, cuts)
    body = [parts[0]]
    for i in range(n):
        body += [f"One of the special magic {what} for {keys[i]} is: {vals[i]}.", parts[i + 1]]

    def ask(i):
        return (f"What is the special magic {what[:-1]} for {keys[i]} mentioned in the provided "
                f"text? The special magic {what[:-1]} for {keys[i]} mentioned in the provided "
                f"text is")

    q = int(rng.integers(0, n))
    prompt = _join(NIAH_INTRO.format(what=what), *body, ask(q))
    text, later = prompt + f" {vals[q]}.\n", []
    if not ev:
        # training asks for every other key too, in a random order: a model that misses
        # here most often answers with another key's value, so each document teaches the
        # match of every key against the others, not of one
        for j in rng.permutation(n):
            if j != q:
                text += ask(j)
                later.append((len(text), len(text) + len(f" {vals[j]}.")))
                text += f" {vals[j]}.\n"
    return Probe("niah_multikey", prompt, f" {vals[q]}.", [vals[q]], text[len(prompt):],
                 cuts[q], {"keys": n, "stated": vals}, later)


def kv_recall(rng, filler, n_chars, ev=False):
    """Several keys close together (associative recall, as MQAR poses it): 4 to 12 needles
    in at most 360 characters of filler a needle, every key asked for. Many key matches a
    document and little else, where a several-keys document of the full context holds 2 to 4:
    a model that has not learned to match a key answers with another key's value. Half the
    documents hold words instead of numbers: a word's first token must be copied from the
    needle, where a number's first digit is one of ten. Not in synth.WEIGHTS: a stage asks
    for it with --kinds."""
    n = int(rng.integers(4, 13))
    words = bool(rng.random() < 0.5)
    return niah_multikey(rng, filler, min(n_chars, n * int(rng.integers(0, 360))), ev, (n, n),
                         words)


def niah_multivalue(rng, filler, n_chars, ev=False):
    v = Values(rng, ev, filler)
    n = int(rng.integers(2, 5))
    key = v.key()
    vals = []
    for _ in range(n):
        vals.append(v.number(7, vals))
    cuts = sorted(float(x) for x in rng.random(n))
    parts = _split_filler(filler, rng, n_chars, cuts)
    body = [parts[0]]
    for i in range(n):
        body += [f"One of the special magic numbers for {key} is: {vals[i]}.", parts[i + 1]]
    ans = " " + ", ".join(vals) + "."
    prompt = _join(NIAH_INTRO.format(what="numbers"), *body,
                   f"What are all the special magic numbers for {key} mentioned in the provided "
                   f"text? The special magic numbers for {key} mentioned in the provided text "
                   f"are")
    return Probe("niah_multivalue", prompt, ans, vals, ans + "\n", cuts[0], {"values": n})


def repeat(rng, filler, n_chars, ev=False):
    """A list of words (or a sentence of filler) stated once, then asked to be repeated."""
    v = Values(rng, ev, filler)
    depth = float(rng.random())
    n = int(rng.integers(4, 9))
    if rng.random() < 0.5:
        words = []
        for _ in range(n):
            words.append(v.word(NOUNS + FIRST_NAMES + PLACES, words))
        span = " ".join(words)
    else:
        span = " ".join(filler.take(rng, 400).split(" ")[1:1 + 2 * n])
    a, b = _split_filler(filler, rng, n_chars, [depth])
    label = v.key()
    prompt = _join(a, f"Here is the {label} list: {span}. End of the {label} list.", b,
                   f"Repeat the {label} list. The {label} list is:")
    return Probe("repeat", prompt, f" {span}.", [span], f" {span}.\n", depth)


def copy(rng, filler, n_chars, ev=False):
    """8 to 40 words and numbers drawn at random, written out, then (after filler) again."""
    v = Values(rng, ev, filler)
    pool = NOUNS + FIRST_NAMES + PLACES
    words = [v.number(int(rng.integers(2, 6))) if rng.random() < 0.3 else v.word(pool)
             for _ in range(int(rng.integers(8, 41)))]
    span = " ".join(words)
    depth = float(rng.random())
    a, b = _split_filler(filler, rng, n_chars, [depth])
    prompt = _join(a, f"Copy this: {span}.", b, "Copy it again:")
    return Probe("copy", prompt, f" {span}.", [span], f" {span}.\n", depth)


# ------------------------------------------------------------------ conversations

def _fact_pool(v):
    """(statement by the user, question, answer, value) for one person's facts."""
    name = v.name()
    city = v.place()
    colour = v.pick(COLOURS, split=False)
    number = v.number(4)
    food = v.pick(FOODS, split=False)
    pet_name = v.name((name,))
    pet = v.pick(PETS, split=False)
    job = v.pick(JOBS, split=False)
    friend = v.name((name, pet_name))
    code = v.key()
    return [
        (f"My name is {name}.", "What is my name?", f"Your name is {name}.", name),
        (f"I live in {city}.", "Where do I live?", f"You live in {city}.", city),
        (f"My favourite colour is {colour}.", "What is my favourite colour?",
         f"Your favourite colour is {colour}.", colour),
        (f"My lucky number is {number}.", "What is my lucky number?",
         f"Your lucky number is {number}.", number),
        (f"I love to eat {food}.", "What do I love to eat?", f"You love to eat {food}.", food),
        (f"I have a {pet} called {pet_name}.", "What is the name of my pet?",
         f"Your {pet} is called {pet_name}.", pet_name),
        (f"I work as a {job}.", "What is my job?", f"You work as a {job}.", job),
        (f"My best friend is {friend}.", "Who is my best friend?",
         f"Your best friend is {friend}.", friend),
        (f"The password for the shed is {code}.", "What is the password for the shed?",
         f"The password for the shed is {code}.", code),
    ]


ACKS = ["Got it. I will remember that.", "Thank you, I have noted it.", "Noted.",
        "I will keep that in mind.", "Understood.", "Nice to know!"]


def _small_talk(rng, filler, n_chars, ev):
    """One (user, assistant) exchange that carries no fact: a passage to read, or a short
    instruction answered from the turn itself."""
    if n_chars > 300 and rng.random() < 0.6:
        passage = filler.take(rng, n_chars)
        first = passage.split(" ")[0].strip(".,;:!?\"'")
        if rng.random() < 0.5:
            return (f"Here is a passage from a book. {passage}",
                    "Thank you. I have read the passage.")
        return (f"Please read this. {passage} What is the first word of the passage?",
                f"The first word of the passage is {first}.")
    return instruct_turn(rng, ev, filler)


def chat(rng, filler, n_chars, ev=False):
    """Facts stated in early turns, small talk and passages (the depth), then a question
    about one of the facts, answered from the context."""
    v = Values(rng, ev, filler)
    facts = _fact_pool(v)
    order = rng.permutation(len(facts))
    n_facts = int(rng.integers(1, 5))
    stated = [facts[i] for i in order[:n_facts]]
    msgs = []
    if rng.random() < 0.3:
        msgs.append(("system", "You are a helpful assistant. Answer from the conversation."))
    n_talk = min(int(rng.integers(1, 6)), max(1, n_chars // 500))
    # facts first (each alone or together), then small talk that fills the context
    if rng.random() < 0.5:
        msgs.append(("user", "Hello! " + " ".join(f[0] for f in stated)))
        msgs.append(("assistant", ACKS[int(rng.integers(0, len(ACKS)))]))
    else:
        for f in stated:
            msgs.append(("user", f[0]))
            msgs.append(("assistant", ACKS[int(rng.integers(0, len(ACKS)))]))
    head = len(render_chat(msgs))
    per = max(0, (n_chars - head - 200) // n_talk)
    for _ in range(n_talk):
        u, a = _small_talk(rng, filler, per, ev)
        msgs.append(("user", u))
        msgs.append(("assistant", a))
    iq = int(rng.integers(0, len(stated)))
    q = stated[iq]
    msgs.append(("user", q[1]))
    prompt = render_chat(msgs, add_generation_prompt=True)
    text, later = prompt + q[2] + IM_END + "\n", []
    if not ev:  # training goes on to ask for the other facts, in a random order
        for j in rng.permutation(len(stated)):
            if j != iq:
                text += render_chat([("user", stated[j][1])], add_generation_prompt=True)
                later.append((len(text), len(text) + len(stated[j][2])))
                text += stated[j][2] + IM_END + "\n"
    return Probe("chat", prompt, q[2], [q[3]], text[len(prompt):],
                 head / max(len(prompt), 1), {"facts": n_facts, "stated": [f[3] for f in stated]},
                 later)


NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()


def instruct_turn(rng, ev=False, filler=None):
    """(instruction, answer): short tasks answered from the turn itself. filler: the open
    vocabulary for training's words (see Values)."""
    v = Values(rng, ev, filler)
    k = int(rng.integers(0, 7))
    if k == 0:
        if not ev and rng.random() < 0.3:  # written in words, as people ask it
            a, b = int(rng.integers(0, 11)), int(rng.integers(0, 11))
            a, b, s = NUMBER_WORDS[a], NUMBER_WORDS[b], NUMBER_WORDS[a + b]
            return f"What is {a} plus {b}?", f"{a.capitalize()} plus {b} is {s}."
        a, b = int(rng.integers(0, 50)), int(rng.integers(0, 50))
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if k == 1:
        a, b = int(rng.integers(0, 100)), int(rng.integers(0, 100))
        while b == a:
            b = int(rng.integers(0, 100))
        return (f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger.")
    if k == 2:
        w = v.word(NOUNS)
        return f"Spell the word {w}.", f"{w} is spelled {'-'.join(w)}."
    if k == 3:
        ws = [v.word(NOUNS) for _ in range(int(rng.integers(2, 5)))]
        return (f"Repeat after me: {' '.join(ws)}", " ".join(ws))
    if k == 4:
        ws = [v.word(NOUNS + PLACES) for _ in range(int(rng.integers(2, 6)))]
        return (f"How many words are in this list: {', '.join(ws)}?",
                f"There are {len(ws)} words in the list.")
    if k == 5:
        greet = ["Hello!", "Hi there.", "Good morning!", "Hello, how are you?"]
        return (greet[int(rng.integers(0, len(greet)))],
                "Hello! I am doing well. How can I help you today?")
    a = int(rng.integers(2, 10))
    return f"What comes after {a} when counting?", f"After {a} comes {a + 1}."


def instruct(rng, filler, n_chars, ev=False):
    msgs = []
    while len(render_chat(msgs)) < min(n_chars, 600) or len(msgs) < 2:
        u, a = instruct_turn(rng, ev, filler)
        msgs += [("user", u), ("assistant", a)]
    u, a = instruct_turn(rng, ev, filler)
    msgs.append(("user", u))
    prompt = render_chat(msgs, add_generation_prompt=True)
    return Probe("instruct", prompt, a, [a.rstrip(".")], a + IM_END + "\n", 1.0)


# ------------------------------------------------------------------ reasoning

VARS = list("abcdefghjkmnpqrstuvwxyz")


def _numbered(lines):
    """The problem's lines as steps: "Step 1: ... Step 2: ...". A thought starts by writing
    its step's line again, so the next step number (one more than the last) is all a model
    must find to copy the line it works on."""
    return [f"Step {i + 1}: {s}" for i, s in enumerate(lines)]


def worked_sum(a, op, k):
    """A sum as the thoughts work it: the ones digit first, then the whole value, so each
    digit written follows from one digit fact ("4 + 9 = 13, so 14 + 9 = 23."; a borrow:
    "13 - 7 = 6, so 23 - 7 = 16."; a value below 10 as it is: "8 - 3 = 5.")."""
    u = a % 10
    if a < 10:
        return f"{a} {op} {k} = {a + k if op == '+' else a - k}"
    if op == "+":
        return f"{u} + {k} = {u + k}, so {a} + {k} = {a + k}"
    if u >= k:
        return f"{u} - {k} = {u - k}, so {a} - {k} = {a - k}"
    return f"{u + 10} - {k} = {u + 10 - k}, so {a} - {k} = {a - k}"


def chain_problem(rng, steps):
    """A chain of assignments: steps - 1 hops from a first value to the asked variable, one
    distractor variable (unnumbered), the question as the last step. Returns (problem text,
    thoughts, answer)."""
    names = [VARS[i] for i in rng.permutation(len(VARS))[:steps + 1]]
    val = int(rng.integers(1, 20))
    lines = [f"{names[0]} = {val}."]
    work = [(lines[0], None)]
    for i in range(1, steps):
        op = "+" if rng.random() < 0.6 or val < 2 else "-"
        k = int(rng.integers(1, 10)) if op == "+" else int(rng.integers(1, min(val, 10)))
        lines.append(f"{names[i]} = {names[i - 1]} {op} {k}.")
        work.append((lines[-1], (val, op, k)))
        val = val + k if op == "+" else val - k
    lines.append(f"What is {names[steps - 1]}?")
    text = _numbered(lines)
    text.insert(int(rng.integers(1, len(text))), f"{names[steps]} = {int(rng.integers(1, 20))}.")
    return " ".join(text), _thoughts(work, lines[-1]), val


def word_problem(rng, steps, v):
    """A person's count of items changed step by step, the question as the last step."""
    who = v.name()
    item = ITEMS[int(rng.integers(0, len(ITEMS)))]
    val = int(rng.integers(2, 20))
    lines = [f"{who} has {val} {item}."]
    work = [(lines[0], None)]
    for _ in range(steps - 1):
        other = v.name((who,))
        if rng.random() < 0.55 or val < 2:
            k = int(rng.integers(1, 10))
            lines.append(f"{other} gives {who} {k} more.")
            work.append((lines[-1], (val, "+", k)))
            val += k
        else:
            k = int(rng.integers(1, min(val, 10)))
            lines.append(f"{who} gives {k} to {other}.")
            work.append((lines[-1], (val, "-", k)))
            val -= k
    lines.append(f"How many {item} does {who} have now?")
    return " ".join(_numbered(lines)), _thoughts(work, lines[-1]), val


def _thoughts(work, question):
    """One thought a step: its line written again, then its sum on the value the thought
    before ended with; the question written again as the last thought."""
    out = []
    for i, (line, calc) in enumerate(work):
        out.append(f"Step {i + 1}: {line}" + ("" if calc is None else f" {worked_sum(*calc)}."))
    out.append(f"Step {len(work) + 1}: {question}")
    return out


def reasoning(rng, filler, n_chars, ev=False, steps=None):
    """A multi-step problem, its thoughts one per paragraph (a step each, then the question
    again), then "Answer: N". Half are posed in a chat, half as plain text."""
    v = Values(rng, ev, filler)
    steps = steps or int(rng.integers(2, 9))
    if rng.random() < 0.5:
        problem, thoughts, val = chain_problem(rng, steps)
    else:
        problem, thoughts, val = word_problem(rng, steps, v)
    work = THOUGHT.join(thoughts) + THOUGHT + "Answer:"
    if rng.random() < 0.5:
        prompt = render_chat([("user", problem)], add_generation_prompt=True) + work
        close = IM_END + "\n"
    else:
        prompt = f"Problem: {problem}{THOUGHT}{work}"
        close = "\n"
    return Probe("reasoning", prompt, f" {val}", [str(val)], f" {val}{close}", 0.0,
                 {"steps": steps, "problem": problem, "thoughts": thoughts})


def random_sum(rng):
    """One sum of a reasoning thought, worked as worked_sum writes it: a value below 100
    and one digit added or taken. Returns (the text up to its result, the result)."""
    a = int(rng.integers(0, 100))
    if rng.random() < 0.5 or a < 2:
        op, k = "+", int(rng.integers(1, 10))
    else:
        op, k = "-", int(rng.integers(1, min(a, 10)))
    r = a + k if op == "+" else a - k
    w = worked_sum(a, op, k)
    return w[:w.rindex("=") + 1], r


def digit_fact(rng):
    """One fact a worked sum rests on: a digit added to a digit, or a digit taken from a
    number below 19 (a borrow's "13 - 7 = 6")."""
    k = int(rng.integers(1, 10))
    if rng.random() < 0.5:
        u = int(rng.integers(0, 10))
        return f"{u} + {k} =", u + k
    u = int(rng.integers(k, k + 10))
    return f"{u} - {k} =", u - k


def arith(rng, filler, n_chars, ev=False):
    """Sums as reasoning's thoughts work them (worked_sum), or half the time the digit facts
    alone ("4 + 9 = 13."), one after another, the last one asked: practice for the one
    skill the thoughts use that no other document teaches (not in synth.WEIGHTS: a stage
    asks for it with --kinds)."""
    one, per = (digit_fact, 12) if rng.random() < 0.5 else (random_sum, 30)
    lines = []
    for _ in range(max(2, min(n_chars, 2000) // per)):
        q, r = one(rng)
        lines.append(f"{q} {r}.")
    q, r = one(rng)
    prompt = " ".join(lines) + " " + q
    return Probe("arith", prompt, f" {r}", [str(r)], f" {r}.\n", 1.0)


def reasoning_question(probe):
    """The prompt of a reasoning probe without its worked thoughts: what a model must
    answer by writing the thoughts itself."""
    p = probe.prompt
    after = p.find(probe.meta["problem"]) + len(probe.meta["problem"])
    return p[:p.find(probe.meta["thoughts"][0], after)]


GENERATORS = {"passkey": passkey, "niah_single": niah_single, "niah_multikey": niah_multikey,
              "niah_multivalue": niah_multivalue, "repeat": repeat, "copy": copy, "chat": chat,
              "instruct": instruct, "reasoning": reasoning, "arith": arith,
              "kv_recall": kv_recall}


def make(kind, rng, filler, n_chars, evaluation=False, **kw):
    return GENERATORS[kind](rng, filler, n_chars, evaluation, **kw)


def eval_rng(seed):
    """The generator of evaluation probes: a seed space training never draws from."""
    return np.random.default_rng([0x6576616C, seed])


def train_rng(seed):
    return np.random.default_rng([0x74726169, seed])
