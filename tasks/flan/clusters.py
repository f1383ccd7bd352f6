"""The FLAN paper's 12 task clusters: names, which clusters overlap, and the ablation order."""

NLI = "nli"
READING_COMPREHENSION = "reading_comprehension"
CLOSED_BOOK_QA = "closed_book_qa"
COMMONSENSE = "commonsense"
COREFERENCE = "coreference"
SENTIMENT = "sentiment"
PARAPHRASE = "paraphrase"
STRUCT_TO_TEXT = "struct_to_text"
TRANSLATION = "translation"
SUMMARIZATION = "summarization"
READING_COMPREHENSION_COMMONSENSE = "reading_comprehension_commonsense"
MISC = "misc"

CLUSTERS = (NLI, READING_COMPREHENSION, CLOSED_BOOK_QA, COMMONSENSE, COREFERENCE, SENTIMENT,
            PARAPHRASE, STRUCT_TO_TEXT, TRANSLATION, SUMMARIZATION,
            READING_COMPREHENSION_COMMONSENSE, MISC)

TITLES = {
    NLI: "Natural language inference", READING_COMPREHENSION: "Reading comprehension",
    CLOSED_BOOK_QA: "Closed-book QA", COMMONSENSE: "Commonsense reasoning",
    COREFERENCE: "Coreference resolution", SENTIMENT: "Sentiment analysis",
    PARAPHRASE: "Paraphrase detection", STRUCT_TO_TEXT: "Struct to text",
    TRANSLATION: "Translation", SUMMARIZATION: "Summarization",
    READING_COMPREHENSION_COMMONSENSE: "Reading comprehension with commonsense",
    MISC: "Miscellaneous",
}

# Pairs the paper treats as overlapping: holding one out of training holds out the other too.
_OVERLAPPING_PAIRS = (
    (READING_COMPREHENSION_COMMONSENSE, READING_COMPREHENSION),
    (READING_COMPREHENSION_COMMONSENSE, COMMONSENSE),
    (NLI, PARAPHRASE),
)

# The number-of-clusters ablation: evaluate on these, and train on the first k of the order.
ABLATION_HELD_OUT = (NLI, CLOSED_BOOK_QA, COMMONSENSE)
ABLATION_ORDER = (SUMMARIZATION, TRANSLATION, READING_COMPREHENSION, SENTIMENT, STRUCT_TO_TEXT,
                  COREFERENCE, MISC)


def overlapping(cluster: str) -> set[str]:
  """The clusters that must leave training when `cluster` is held out (itself included)."""
  if cluster not in CLUSTERS:
    raise ValueError(f"unknown cluster {cluster!r}; clusters: {', '.join(CLUSTERS)}")
  out = {cluster}
  for a, b in _OVERLAPPING_PAIRS:
    if cluster in (a, b):
      out |= {a, b}
  return out


def training_clusters(held_out: str) -> list[str]:
  """The clusters to train on when evaluating `held_out` (in the canonical order)."""
  excluded = overlapping(held_out)
  return [c for c in CLUSTERS if c not in excluded]
