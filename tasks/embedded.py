"""An offline instruction collection generated in code: 5 clusters of 3 small datasets each.

It exists so the demo, the tests and the miniature study can instruction-tune and evaluate zero-shot
without any download. Every example is drawn from a `random.Random` seeded by (seed, dataset, split),
so the collection is the same on every machine. Tasks are `embedded_<dataset>` (+ `_eval`,
`_scoring`, and `_eval_tI`, `_scoring_tI` per answer template I; `_notemplate` and `_datasetname` for
the paper's format ablations); mixtures are `embedded_all`, `embedded_no_<cluster>` (train on every
other cluster; `..._notemplate`, `..._datasetname`; `..._clustersK`: the first K of the others in
`ABLATION_ORDER`), `embedded_eval_<cluster>` (the cluster's one-template tasks) and
`embedded_eval_<cluster>_scoring` (its rank-classification ones). Splits: train, validation (choose
a template on it) and test (report the chosen template on it).

`embedded_pretrain` is plain text about the same world (the facts behind every dataset, written as
prose, with no instruction and no task format): what a base model is pretrained on before tuning.
"""

import functools
import random
from typing import Callable

import seqio
from t5.evaluation import metrics as t5_metrics
import tensorflow as tf

from flan_jax import task_info
from flan_tasks import instruction
from flan_tasks import templates as templates_lib
from flan_tasks.templates import Template
from flan_tasks.vocab import output_features

SEED = 0
NUM_EXAMPLES = {"train": 2000, "validation": 200, "test": 200}
PREFIX = "embedded_"
# Every example is an independent seeded draw, so the order examples are read in is already random and the
# shuffle buffer only mixes one epoch into the next: a small one does that as well as seqio's 1,000, and keeps
# a run's first batch and each saved input position cheap (for a 12-task mixture, measured on 2 cores: first
# batch 2.9 s -> 0.8 s, a saved position 0.65 s -> 0.14 s).
SHUFFLE_BUFFER_SIZE = 128

# ------------------------------------------------------------------ sentiment
_REVIEW_PHRASES = {
    "movie": (
        ["a gripping story", "superb acting", "I laughed all the way through", "a moving ending",
         "gorgeous camera work", "the best film this year", "a clever script"],
        ["a dull plot", "wooden acting", "I walked out early", "a predictable ending",
         "muddy sound", "two hours I want back", "a lazy script"]),
    "product": (
        ["works perfectly", "great value for the price", "arrived a day early", "sturdy and light",
         "the battery lasts for days", "I would buy it again", "easy to set up"],
        ["broke after a week", "a waste of money", "arrived damaged", "flimsy and heavy",
         "the battery dies by noon", "I sent it back", "impossible to set up"]),
    "restaurant": (
        ["delicious food", "friendly staff", "we were seated at once", "fresh bread",
         "generous portions", "a lovely view", "fair prices"],
        ["cold soup", "a rude waiter", "we waited an hour", "stale bread",
         "tiny portions", "a noisy room", "far too expensive"]),
}


def _review(kind):
  def make(rng):
    label = rng.randrange(2)
    phrases = rng.sample(_REVIEW_PHRASES[kind][label], 2)
    return {"review": f"{phrases[0].capitalize()}, {phrases[1]}.",
            "answer": ["positive", "negative"][label], "options": ["positive", "negative"]}
  return make


# ------------------------------------------------------------------ nli
_NLI_OPTIONS = ["yes", "it is not possible to tell", "no"]
_OBJECTS = ["ball", "car", "door", "kite", "mug", "hat", "bike", "lamp"]
_COLORS = ["red", "blue", "green", "yellow", "black", "white"]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
_PLACES = ["kitchen", "garden", "library", "station", "office", "market"]
_THINGS = ["apples", "books", "cups", "coins", "pens", "chairs"]


def _nli_answer(rng, same_subject, holds):
  if not same_subject:
    return _NLI_OPTIONS[1]
  return _NLI_OPTIONS[0] if holds else _NLI_OPTIONS[2]


def _color_nli(rng):
  obj, obj2 = rng.sample(_OBJECTS, 2)
  color = rng.choice(_COLORS)
  case = rng.randrange(3)
  hyp_obj = obj if case < 2 else obj2
  hyp_color = color if case == 0 else rng.choice([c for c in _COLORS if c != color])
  return {"premise": f"The {obj} is {color}.", "hypothesis": f"The {hyp_obj} is {hyp_color}.",
          "answer": _nli_answer(rng, case < 2, case == 0), "options": _NLI_OPTIONS}


def _place_nli(rng):
  name, name2 = rng.sample(_NAMES, 2)
  place = rng.choice(_PLACES)
  case = rng.randrange(3)
  who = name if case < 2 else name2
  where = place if case == 0 else rng.choice([p for p in _PLACES if p != place])
  return {"premise": f"{name} is waiting in the {place}.", "hypothesis": f"{who} is in the {where}.",
          "answer": _nli_answer(rng, case < 2, case == 0), "options": _NLI_OPTIONS}


def _count_nli(rng):
  thing, thing2 = rng.sample(_THINGS, 2)
  n, m = rng.randrange(1, 10), rng.randrange(1, 10)
  case = rng.randrange(3)
  what = thing2 if case == 2 else thing
  return {"premise": f"There are {n} {thing} on the table.",
          "hypothesis": f"There are more than {m} {what} on the table.",
          "answer": _nli_answer(rng, case < 2, n > m), "options": _NLI_OPTIONS}


# ------------------------------------------------------------------ arithmetic
def _addition(rng):
  a, b = rng.randrange(50), rng.randrange(50)
  return {"a": str(a), "b": str(b), "answer": str(a + b)}


def _comparison(rng):
  a, b = rng.sample(range(100), 2)
  return {"a": str(a), "b": str(b), "answer": str(max(a, b)), "options": [str(a), str(b)]}


def _parity(rng):
  n = rng.randrange(1000)
  return {"number": str(n), "answer": ["even", "odd"][n % 2], "options": ["even", "odd"]}


# ------------------------------------------------------------------ word games
_WORDS = ["river", "garden", "pencil", "window", "rocket", "castle", "orange", "basket", "candle",
          "dragon", "forest", "island", "jacket", "ladder", "marble", "needle", "pillow", "silver",
          "tunnel", "violin", "wallet", "yellow", "zipper", "bridge", "cactus", "donkey", "engine"]


def _reverse(rng):
  word = rng.choice(_WORDS)
  return {"word": word, "answer": word[::-1]}


def _uppercase(rng):
  words = rng.sample(_WORDS, 2)
  return {"phrase": " ".join(words), "answer": " ".join(words).upper()}


def _first_letter(rng):
  word = rng.choice(_WORDS)
  return {"word": word, "answer": word[0]}


# ------------------------------------------------------------------ topic
_TOPICS = {
    "sports": ["the striker scored twice", "the team won the final", "the coach resigned",
               "a new record in the marathon", "the match went to extra time"],
    "food": ["the soup needs more salt", "a recipe for lemon cake", "the bakery opened early",
             "fresh tomatoes at the market", "how to roast a chicken"],
    "weather": ["heavy rain is expected tonight", "a heat wave hits the coast", "snow closed the pass",
                "strong winds knocked down trees", "a sunny weekend ahead"],
    "science": ["a new planet was found", "the vaccine trial ended", "the telescope sent images",
                "a study of bird migration", "the rover drilled a rock"],
}
_TOPIC_NAMES = list(_TOPICS)
_ANIMALS = {"ocean": ["shark", "octopus", "whale", "crab"], "desert": ["camel", "scorpion", "lizard"],
            "forest": ["deer", "owl", "squirrel", "bear"], "arctic": ["polar bear", "walrus", "seal"]}
_PRODUCTS = {"kitchen": ["frying pan", "kettle", "whisk", "toaster"],
             "garden": ["rake", "hose", "flower pot", "lawn mower"],
             "office": ["stapler", "printer", "desk lamp", "notebook"],
             "clothing": ["scarf", "raincoat", "sneakers", "belt"]}


def _headline(rng):
  topic = rng.choice(_TOPIC_NAMES)
  return {"headline": rng.choice(_TOPICS[topic]).capitalize(), "answer": topic,
          "options": _TOPIC_NAMES}


def _category(groups, key):
  names = list(groups)

  def make(rng):
    group = rng.choice(names)
    return {key: rng.choice(groups[group]), "answer": group, "options": names}
  return make


# ------------------------------------------------------------------ templates
_SENTIMENT = lambda thing: [
    Template(f"{{review}}\n\nWas this {thing} review positive or negative?\n{{options_}}"),
    Template(f"Read the {thing} review below and say how the writer felt.\n\n{{review}}\n{{options_}}"),
    Template(f"Review: {{review}}\nIs the sentiment of this {thing} review positive or negative?"),
    Template(f"Write a short {thing} review that is {{answer}}.", "{review}"),
]
_NLI = [
    Template("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\n{options_}"),
    Template("{premise}\n\nBased on the sentence above, can we conclude that \"{hypothesis}\"?\n{options_}"),
    Template("Is \"{hypothesis}\" true if \"{premise}\"?\n{options_}"),
    Template("Given that {premise} Is it then true that {hypothesis}\n{options_}"),
]
_TEMPLATES = {
    "addition": [Template("What is {a} plus {b}?"), Template("Add {a} and {b}."),
                 Template("{a} + {b} = ?"), Template("Compute the sum of {a} and {b}.")],
    "comparison": [Template("Which number is larger, {a} or {b}?\n{options_}"),
                   Template("Pick the bigger of the two numbers.\n{options_}"),
                   Template("{a} or {b}: which is greater?\n{options_}")],
    "parity": [Template("Is {number} even or odd?\n{options_}"),
               Template("Tell me whether the number {number} is even or odd."),
               Template("{number}\n\nIs the number above even or odd?\n{options_}"),
               Template("Give me an {answer} number.", "{number}")],
    "reverse_word": [Template("Spell \"{word}\" backwards."), Template("Reverse the letters of {word}."),
                     Template("{word}\n\nWrite the word above in reverse order."),
                     Template("Which word, written backwards, gives \"{answer}\"?", "{word}")],
    "uppercase": [Template("Write \"{phrase}\" in capital letters."),
                  Template("Convert to upper case: {phrase}"),
                  Template("{phrase}\n\nRepeat the text above using only capitals."),
                  Template("Write \"{answer}\" in lower case.", "{phrase}")],
    "first_letter": [Template("What is the first letter of \"{word}\"?"),
                     Template("{word}\n\nWhich letter does this word start with?"),
                     Template("Name the letter that begins the word {word}.")],
    "headline_topic": [Template("Headline: {headline}\nWhat is this headline about?\n{options_}"),
                       Template("{headline}\n\nPick the topic of this news item.\n{options_}"),
                       Template("Which section of the newspaper would print \"{headline}\"?\n{options_}"),
                       Template("Write a news headline about {answer}.", "{headline}")],
    "animal_habitat": [Template("Where does a {animal} live?\n{options_}"),
                       Template("Choose the habitat of the {animal}.\n{options_}"),
                       Template("{animal}\n\nWhich habitat fits this animal best?\n{options_}"),
                       Template("Name an animal that lives in the {answer}.", "{animal}")],
    "product_category": [Template("Which shop department sells a {product}?\n{options_}"),
                         Template("Product: {product}\nCategory?\n{options_}"),
                         Template("Put the {product} in the right category.\n{options_}")],
}

# (cluster, dataset, example maker, fields, templates)
DATASETS: list[tuple[str, str, Callable, tuple[str, ...], list[Template]]] = [
    ("sentiment", "movie_review", _review("movie"), ("review", "answer", "options"), _SENTIMENT("movie")),
    ("sentiment", "product_review", _review("product"), ("review", "answer", "options"), _SENTIMENT("product")),
    ("sentiment", "restaurant_review", _review("restaurant"), ("review", "answer", "options"),
     _SENTIMENT("restaurant")),
    ("nli", "color_nli", _color_nli, ("premise", "hypothesis", "answer", "options"), _NLI),
    ("nli", "place_nli", _place_nli, ("premise", "hypothesis", "answer", "options"), _NLI),
    ("nli", "count_nli", _count_nli, ("premise", "hypothesis", "answer", "options"), _NLI),
    ("arithmetic", "addition", _addition, ("a", "b", "answer"), _TEMPLATES["addition"]),
    ("arithmetic", "comparison", _comparison, ("a", "b", "answer", "options"), _TEMPLATES["comparison"]),
    ("arithmetic", "parity", _parity, ("number", "answer", "options"), _TEMPLATES["parity"]),
    ("word_games", "reverse_word", _reverse, ("word", "answer"), _TEMPLATES["reverse_word"]),
    ("word_games", "uppercase", _uppercase, ("phrase", "answer"), _TEMPLATES["uppercase"]),
    ("word_games", "first_letter", _first_letter, ("word", "answer"), _TEMPLATES["first_letter"]),
    ("topic", "headline_topic", _headline, ("headline", "answer", "options"), _TEMPLATES["headline_topic"]),
    ("topic", "animal_habitat", _category(_ANIMALS, "animal"), ("animal", "answer", "options"),
     _TEMPLATES["animal_habitat"]),
    ("topic", "product_category", _category(_PRODUCTS, "product"), ("product", "answer", "options"),
     _TEMPLATES["product_category"]),
]
CLUSTERS = sorted({cluster for cluster, *_ in DATASETS})
# The order in which the number-of-clusters ablation adds tuning clusters (the held-out one skipped).
ABLATION_ORDER = ("nli", "topic", "arithmetic", "word_games", "sentiment")
TITLES = {"sentiment": "Sentiment", "nli": "Inference", "arithmetic": "Arithmetic",
          "word_games": "Word games", "topic": "Topic"}
VARIANTS = ("notemplate", "datasetname")  # the paper's format ablations of the training tasks


# ------------------------------------------------------------------ pretraining text
# The facts behind each dataset, as sentences a web page might contain: statements, never a question
# to answer, an options list or an instruction. Sentence frames are chosen at random per fact.
_SENTIMENT_WORDS = ("positive", "negative")


def _review_fact(rng):
  kind = rng.choice(list(_REVIEW_PHRASES))
  label = rng.randrange(2)
  first, second = rng.sample(_REVIEW_PHRASES[kind][label], 2)
  word = _SENTIMENT_WORDS[label]
  return rng.choice([
      f"{first.capitalize()}, {second}. All in all my feelings about the {kind} were {word}.",
      f"My take on the {kind} is {word}: {first}, {second}.",
      f"Reviews that say \"{first}\" are usually {word} about the {kind}.",
      f"{first.capitalize()} and {second}, so the verdict on this {kind} is {word}.",
  ])


def _nli_fact(rng):
  obj, obj2 = rng.sample(_OBJECTS, 2)
  color, other = rng.sample(_COLORS, 2)
  name, name2 = rng.sample(_NAMES, 2)
  place, elsewhere = rng.sample(_PLACES, 2)
  thing = rng.choice(_THINGS)
  n, m = rng.randrange(1, 10), rng.randrange(1, 10)
  relation = "more" if n > m else "not more"
  return rng.choice([
      f"The {obj} is {color}, which means the {obj} is not {other}.",
      f"The {obj} is {color}. Nothing is known about the colour of the {obj2}.",
      f"{name} is waiting in the {place}, so {name} is in the {place} and not in the {elsewhere}.",
      f"{name} is waiting in the {place}; where {name2} is, nobody knows.",
      f"There are {n} {thing} on the table. That is {relation} than {m} {thing}.",
  ])


def _arithmetic_fact(rng):
  a, b = rng.randrange(50), rng.randrange(50)
  x, y = rng.sample(range(100), 2)
  number = rng.randrange(1000)
  return rng.choice([
      f"{a} plus {b} makes {a + b}.",
      f"Adding {a} to {b} gives {a + b}.",
      f"Of {x} and {y}, the larger number is {max(x, y)}.",
      f"{number} is an {['even', 'odd'][number % 2]} number.",
  ])


def _word_fact(rng):
  word = rng.choice(_WORDS)
  phrase = " ".join(rng.sample(_WORDS, 2))
  return rng.choice([
      f"Spelled backwards, {word} becomes {word[::-1]}.",
      f"In capital letters, {phrase} is written {phrase.upper()}.",
      f"The word {word} begins with the letter {word[0]}.",
  ])


def _topic_fact(rng):
  topic = rng.choice(_TOPIC_NAMES)
  habitat = rng.choice(list(_ANIMALS))
  department = rng.choice(list(_PRODUCTS))
  return rng.choice([
      f"From the {topic} pages: {rng.choice(_TOPICS[topic])}.",
      f"The {rng.choice(_ANIMALS[habitat])} lives in the {habitat}.",
      f"You can buy a {rng.choice(_PRODUCTS[department])} in the {department} department.",
  ])


PRETRAIN_FACTS = {"sentiment": _review_fact, "nli": _nli_fact, "arithmetic": _arithmetic_fact,
                  "word_games": _word_fact, "topic": _topic_fact}
PRETRAIN_EXAMPLES = {"train": 20000, "validation": 500}
PRETRAIN_TASK = PREFIX + "pretrain"


def pretrain_text(split: str, seed: int = SEED) -> list[str]:
  """Short documents of two facts each, from every cluster's world."""
  rng = random.Random(f"{seed}:pretrain:{split}")
  makers = [PRETRAIN_FACTS[c] for c in sorted(PRETRAIN_FACTS)]
  return [" ".join(rng.choice(makers)(rng) for _ in range(2)) for _ in range(PRETRAIN_EXAMPLES[split])]


def _pretrain_dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"text": pretrain_text(split)})


def _register_pretrain() -> None:
  """Next-token prediction on the plain text: every token is a target, nothing is an input."""
  vocab = output_features()["targets"].vocabulary
  seqio.TaskRegistry.add(
      PRETRAIN_TASK,
      source=seqio.FunctionDataSource(_pretrain_dataset_fn, splits=list(PRETRAIN_EXAMPLES),
                                      num_input_examples=dict(PRETRAIN_EXAMPLES)),
      preprocessors=[seqio.map_over_dataset(lambda ex: {"inputs": "", "targets": ex["text"]}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab, add_eos=False, required=False),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[], shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)
  task_info.register(PRETRAIN_TASK, dataset=PRETRAIN_TASK, cluster="pretraining", template=None, kind="train")


@functools.cache
def examples(dataset: str, split: str, seed: int = SEED) -> tuple[dict, ...]:
  """The dataset's examples as Python dicts of strings (and a list of options)."""
  make = {name: fn for _, name, fn, _, _ in DATASETS}[dataset]
  rng = random.Random(f"{seed}:{dataset}:{split}")
  return tuple(make(rng) for _ in range(NUM_EXAMPLES[split]))


def _dataset_fn(dataset, split, shuffle_files, seed=None):
  del shuffle_files, seed  # one file per split; the seqio pipeline shuffles examples
  rows = examples(dataset, split)
  columns = {key: [row[key] for row in rows] for key in rows[0]}
  return tf.data.Dataset.from_tensor_slices(columns)


def _metrics(make):
  if "options" in make(random.Random(0)):
    return (t5_metrics.accuracy,)
  return (t5_metrics.accuracy, t5_metrics.edit_distance)


def _variant_templates(dataset: instruction.InstructionDataset, variant: str) -> list[Template]:
  """The training template of a format ablation: the raw fields, or the raw fields after the
  dataset's name ("[Cluster: dataset] ")."""
  title = f"[{TITLES[dataset.cluster]}: {dataset.name[len(PREFIX):]}] " if variant == "datasetname" else ""
  return [templates_lib.raw_template(dataset.templates, dataset.has_options, prefix=title)]


def tuning_clusters(held_out: str, count: int) -> list[str]:
  """The first `count` clusters of ABLATION_ORDER other than `held_out`."""
  return [c for c in ABLATION_ORDER if c != held_out][:count]


def register_all() -> None:
  per_template = {}  # cluster -> its datasets' one-template evaluation tasks
  for cluster, name, make, fields, templates in DATASETS:
    source = seqio.FunctionDataSource(
        functools.partial(_dataset_fn, name), splits=list(NUM_EXAMPLES),
        num_input_examples=dict(NUM_EXAMPLES))
    dataset = instruction.InstructionDataset(
        name=PREFIX + name, cluster=cluster, source=source, fields=fields,
        templates=templates, metric_fns=_metrics(make), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)
    per_template.setdefault(cluster, []).extend(
        task for task in instruction.register(dataset) if task_info.lookup(task).template is not None)
    for variant in VARIANTS:
      instruction.add_generative_task(f"{dataset.name}_{variant}", dataset, _variant_templates(dataset, variant),
                                      kind="train")

  def train_tasks(clusters, variant=""):
    return [PREFIX + name + variant for cluster, name, *_ in DATASETS if cluster in clusters]

  seqio.MixtureRegistry.add(PREFIX + "all", train_tasks(CLUSTERS), default_rate=1.0)
  for cluster in CLUSTERS:
    others = [c for c in CLUSTERS if c != cluster]
    seqio.MixtureRegistry.add(f"{PREFIX}no_{cluster}", train_tasks(others), default_rate=1.0)
    for variant in VARIANTS:
      seqio.MixtureRegistry.add(f"{PREFIX}no_{cluster}_{variant}", train_tasks(others, f"_{variant}"),
                                default_rate=1.0)
    for count in range(1, len(others)):
      seqio.MixtureRegistry.add(f"{PREFIX}no_{cluster}_clusters{count}",
                                train_tasks(tuning_clusters(cluster, count)), default_rate=1.0)
    seqio.MixtureRegistry.add(f"{PREFIX}eval_{cluster}", per_template[cluster], default_rate=1.0)
    scoring = [t for t in per_template[cluster] if task_info.lookup(t).kind == "scoring"]
    if scoring:
      seqio.MixtureRegistry.add(f"{PREFIX}eval_{cluster}_scoring", scoring, default_rate=1.0)
  _register_pretrain()
