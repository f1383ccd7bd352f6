"""Summarization: AESLC, AG News, CNN-DM, Gigaword, Multi-News, Newsroom, Opinion Abstracts
(iDebate, Rotten Tomatoes), SAMSum, Wiki Lingua EN, XSum."""


from flan_tasks import metrics
from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T


def summary_templates(thing: str, summary: str = "summary") -> list[T]:
  """text -> answer (a summary), phrased for a kind of text and of summary."""
  return [
      T(f"{{text}}\n\nWrite a {summary} of the {thing} above."),
      T(f"Summarize this {thing}:\n\n{{text}}"),
      T(f"{thing.capitalize()}:\n{{text}}\n\n{summary.capitalize()}:"),
      T(f"Read the following {thing} and give a short {summary}.\n{{text}}"),
      T(f"What are the main points of this {thing}? Answer with a {summary}.\n\n{{text}}"),
      T(f"Condense the {thing} below into a {summary}.\n\n{{text}}"),
      T(f"{{text}}\n\nIn a few words, what is this {thing} about?"),
      T(f"Here is a {thing}. {{text}}\nBriefly, it says:"),
      T(f"Write a {thing} that fits this {summary}: {{answer}}", "{text}"),
      T(f"{summary.capitalize()}: {{answer}}\n\nWrite the {thing} it could come from.",
        "{text}"),
  ]


# title, description -> topic
TOPIC = [
    T("{title}\n{description}\n\nWhat is this news article about?\n{options_}"),
    T("Which section of a newspaper does this story belong in?\n\n{title}: {description}\n"
      "{options_}"),
    T("Headline: {title}\nText: {description}\nTopic?\n{options_}"),
    T("Classify the topic of the following news item.\n{title}. {description}\n{options_}"),
    T("Read the article and pick its subject.\n\n{description}\n(Title: {title})\n{options_}"),
    T("\"{title}\" - {description}\nIs this about world news, sports, business or "
      "science/technology?\n{options_}"),
    T("What kind of news is this? {title} {description}\n{options_}"),
    T("News snippet: {description}\nHeadline: {title}\nCategory:\n{options_}"),
    T("Write the title of a {answer} news article.", "{title}"),
    T("Title: {title}\nWrite the opening of a {answer} news story with this title.",
      "{description}"),
]

TOPICS = ("world", "sports", "business", "science and technology")


def _opinions(key, value):
  def to_fields(ex):
    return {"text": features.join(ex[key]["value"], "\n"), "answer": ex[value]}
  return to_fields


def _summaries(name, paper_name, tfds, train_size, text, answer, thing, summary="summary",
               **kwargs):
  return FlanDataset(
      name=name, cluster=clusters.SUMMARIZATION, paper_name=paper_name, tfds=tfds,
      train_size=train_size,
      to_fields=text if callable(text) else features.generation(answer, text=text),
      fields=("text", "answer"), templates=summary_templates(thing, summary),
      metric_fns=metrics.SUMMARY, **kwargs)


DATASETS = [
    _summaries("aeslc", "AESLC", "aeslc:1.0.0", 14_436, "email_body", "subject_line", "email",
               "subject line"),
    FlanDataset(
        name="ag_news", cluster=clusters.SUMMARIZATION, paper_name="AG News",
        tfds="ag_news_subset:1.0.0", train_size=120_000,
        to_fields=features.classification(TOPICS, title="title", description="description"),
        fields=("title", "description", "answer", "options"), templates=TOPIC,
        test_split="test"),
    _summaries("cnn_dailymail", "CNN-DM", "cnn_dailymail:3.4.0", 287_113, "article",
               "highlights", "news article", "list of highlights"),
    _summaries("gigaword", "Gigaword", "gigaword:1.2.0", 3_803_957, "document", "summary",
               "sentence", "headline"),
    _summaries("multi_news", "Multi-News", "multi_news:2.1.0", 44_972, "document", "summary",
               "set of news reports"),
    _summaries("newsroom", "Newsroom", "newsroom:1.0.0", 995_041, "text", "summary",
               "news article",
               manual="TFDS needs a manual download (the corpus is released on request)"),
    _summaries("opinion_abstracts_idebate", "Opin-Abs: iDebate", "opinion_abstracts/idebate:1.0.0",
               2_259, _opinions("_argument_sentences", "_claim"), None, "debate argument",
               "one-sentence claim", test_split=None),
    _summaries("opinion_abstracts_rotten_tomatoes", "Opin-Abs: Movie",
               "opinion_abstracts/rotten_tomatoes:1.0.0", 3_731,
               _opinions("_critics", "_critic_consensus"), None, "set of movie reviews",
               "critics' consensus", test_split=None),
    _summaries("samsum", "SAMSum", "samsum:1.0.0", 14_732, "dialogue", "summary",
               "conversation",
               manual="TFDS needs a manual download of the corpus archive"),
    _summaries("wiki_lingua_en", "Wiki Lingua EN", "gem/wiki_lingua_english_en:1.1.0", 99_020,
               "source", "target", "how-to article"),
    _summaries("xsum", "XSum (GEM version)", "gem/xsum:1.1.0", 23_206, "document", "target",
               "BBC article", "one-sentence summary"),
]
