"""Reading comprehension (BoolQ, DROP, MultiRC, OBQA, SQuAD v1/v2) and reading comprehension
with commonsense (CosmosQA, ReCoRD)."""

import tensorflow as tf

from flan_tasks import metrics
from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# context, question -> answer (a span or a short free answer)
EXTRACTIVE = [
    T("{context}\n\nAnswer the question using the passage above: {question}"),
    T("Read this and answer the question.\n\n{context}\n\nQuestion: {question}"),
    T("Passage: {context}\nQuestion: {question}\nAnswer:"),
    T("Answer \"{question}\" based on the following text.\n\n{context}"),
    T("Question: {question}\n\nThe answer is somewhere in this paragraph:\n{context}"),
    T("{context}\nFrom the text, {question}"),
    T("Here is an article.\n{context}\nWhat is the answer to this question: {question}"),
    T("Use the context to respond briefly.\nContext: {context}\nQ: {question}\nA:"),
    T("{context}\n\nWrite a question about the passage above whose answer is \"{answer}\".",
      "{question}"),
    T("Make up a reading-comprehension question for this text. The answer should be {answer}.\n\n"
      "{context}", "{question}"),
]

# context, question -> answer, or "unanswerable"
EXTRACTIVE_OR_NOT = [
    T("{context}\n\nAnswer the question using the passage above, or say \"unanswerable\": "
      "{question}"),
    T("Read this and answer the question. If the text does not say, answer \"unanswerable\".\n\n"
      "{context}\n\nQuestion: {question}"),
    T("Passage: {context}\nQuestion: {question}\nAnswer (or \"unanswerable\"):"),
    T("Answer \"{question}\" from the following text, if it can be answered.\n\n{context}"),
    T("Question: {question}\n\nThe answer may or may not be in this paragraph:\n{context}"),
    T("{context}\nIf the text tells us, {question}"),
    T("Here is an article.\n{context}\nCan you answer this question? {question}"),
    T("Context: {context}\nQ: {question}\nA short answer, or \"unanswerable\" if there is none:"),
    T("{context}\n\nWrite a question about the passage above whose answer is \"{answer}\".",
      "{question}"),
    T("Make up a question for this text; its answer should be {answer}.\n\n{context}",
      "{question}"),
]

# passage, question -> no / yes
YES_NO = [
    T("{passage}\n\nBased on the passage, {question}?\n{options_}"),
    T("Read the text and answer the yes/no question.\n\n{passage}\n\nQuestion: {question}?\n"
      "{options_}"),
    T("Passage: {passage}\nQuestion: {question}?\nAnswer:\n{options_}"),
    T("Is it true that {question}? Use this passage to decide.\n\n{passage}\n{options_}"),
    T("{question}?\n\nAnswer using the following text:\n{passage}\n{options_}"),
    T("Text: {passage}\n\nAfter reading the text, say whether {question}.\n{options_}"),
    T("Here is a paragraph from an encyclopedia.\n{passage}\nQ: {question}?\n{options_}"),
    T("Given \"{passage}\", answer: {question}?\n{options_}"),
    T("{passage}\n\nWrite a yes/no question about this text whose answer is {answer}.",
      "{question}"),
    T("Write a question about the passage that is answered with \"{answer}\".\n\n{passage}",
      "{question}"),
]

# paragraph, question, response -> no / yes (is the response correct?)
RESPONSE_CHECK = [
    T("{paragraph}\n\nQuestion: {question}\nResponse: {response}\nIs the response correct?\n"
      "{options_}"),
    T("Read the paragraph and decide whether the answer given to the question is right.\n\n"
      "{paragraph}\n\nQ: {question}\nA: {response}\n{options_}"),
    T("Paragraph: {paragraph}\nSomeone answered \"{question}\" with \"{response}\". Correct?\n"
      "{options_}"),
    T("{question}\n\nIs \"{response}\" a valid answer, according to the text below?\n\n"
      "{paragraph}\n{options_}"),
    T("Given this text:\n{paragraph}\n\nwould \"{response}\" be an accurate answer to "
      "\"{question}\"?\n{options_}"),
    T("Check the answer against the passage.\nPassage: {paragraph}\nQuestion: {question}\n"
      "Proposed answer: {response}\n{options_}"),
    T("{paragraph}\n\nBased on the text, does \"{response}\" answer the question \"{question}\"?\n"
      "{options_}"),
    T("A student read this:\n{paragraph}\nAsked \"{question}\", they said \"{response}\". "
      "Were they right?\n{options_}"),
    T("Text: {paragraph}\nAnswer the question \"{question}\": is \"{response}\" true?\n{options_}"),
    T("{paragraph}\n\nQuestion: {question}\nWrite a response to the question. Asked whether "
      "it is correct, a reader of the paragraph should say \"{answer}\".", "{response}"),
]

# fact, question, options -> answer
OPEN_BOOK = [
    T("Fact: {fact}\nQuestion: {question}\n{options_}"),
    T("Use the fact \"{fact}\" to answer the question below.\n\n{question}\n{options_}"),
    T("{question}\n\nHint: {fact}\n{options_}"),
    T("Knowing that {fact}, pick the right answer.\n{question}\n{options_}"),
    T("Here is a science fact: {fact}\nWhich choice answers \"{question}\"?\n{options_}"),
    T("Answer the question. You may rely on this: {fact}\n\nQ: {question}\n{options_}"),
    T("{fact}\n\nGiven the above, {question}\n{options_}"),
    T("Question: {question}\nRelevant fact: {fact}\nChoose one.\n{options_}"),
    T("Fact: {fact}\nWrite a multiple-choice question that this fact helps answer; "
      "the correct choice is \"{answer}\".", "{question}"),
    T("Write a question whose answer is \"{answer}\", using the fact: {fact}", "{question}"),
]

# context, question, options -> answer (commonsense about everyday narratives)
NARRATIVE_CHOICE = [
    T("{context}\n\nQuestion: {question}\n{options_}"),
    T("Read the story and answer the question.\n\n{context}\n\n{question}\n{options_}"),
    T("Context: {context}\nQ: {question}\nPick the best answer.\n{options_}"),
    T("{question}\n\nThink about what probably happened here:\n{context}\n{options_}"),
    T("Here is a short account: {context}\nWhat is the most sensible answer to \"{question}\"?\n"
      "{options_}"),
    T("Given the following, {question}\n\n{context}\n{options_}"),
    T("Story: {context}\nUsing common sense, answer: {question}\n{options_}"),
    T("{context}\nWhich option best answers the question \"{question}\"?\n{options_}"),
    T("{context}\n\nWrite a question about this passage whose best answer is \"{answer}\".",
      "{question}"),
    T("Ask something about the story below that can be answered with \"{answer}\".\n\n{context}",
      "{question}"),
]

# passage, query (with a ____ blank), options -> answer (an entity)
CLOZE_ENTITY = [
    T("{passage}\n\nFill in the blank: {query}\n{options_}"),
    T("Read the article and choose what belongs in the blank.\n\n{passage}\n\n{query}\n{options_}"),
    T("Article: {passage}\nSentence: {query}\nWhich entity completes the sentence?\n{options_}"),
    T("Complete this sentence about the news story below: {query}\n\n{passage}\n{options_}"),
    T("{passage}\nWhat should replace ____ in \"{query}\"?\n{options_}"),
    T("Here is a news article.\n{passage}\n\nNow finish the follow-up line: {query}\n{options_}"),
    T("Given the story, who or what is missing from \"{query}\"?\n\n{passage}\n{options_}"),
    T("Text: {passage}\n\nBlank sentence: {query}\nThe blank stands for:\n{options_}"),
    T("{passage}\n\nWrite a sentence with a blank (____) that should be filled with "
      "\"{answer}\".", "{query}"),
    T("Summary: {passage}\nWrite a follow-up sentence about {answer}, leaving a blank where "
      "the name goes.", "{query}"),
]

_QA_FIELDS = ("context", "question", "answer")


def _squad_v2(ex):
  answer = features.first(ex["answers"]["text"], "unanswerable")
  answer = tf.where(ex["is_impossible"], tf.constant("unanswerable"), answer)
  return {"context": ex["context"], "question": ex["question"], "answer": answer}


def _openbookqa(ex):
  q = ex["question"]
  options = tf.stack([q["choice_A"], q["choice_B"], q["choice_C"], q["choice_D"]])
  return {"fact": ex["fact1"], "question": q["stem"], "options": options,
          "answer": features.pick(options, ex["answerKey"])}


def _cosmos_qa(ex):
  options = tf.stack([ex[f"answer{i}"] for i in range(4)])
  return {"context": ex["context"], "question": ex["question"], "options": options,
          "answer": features.pick(options, ex["label"])}


def _record(ex):
  passage = tf.strings.regex_replace(ex["passage"], r"@highlight\n", "- ")
  query = tf.strings.regex_replace(ex["query"], "@placeholder", "____")
  entities = tf.reshape(ex["entities"], [-1])
  answer = features.first(ex["answers"], features.first(entities, "none"))
  missing = tf.logical_not(tf.reduce_any(tf.equal(entities, answer)))
  options = tf.cond(missing, lambda: tf.concat([entities, [answer]], 0), lambda: entities)
  return {"passage": passage, "query": query, "options": options, "answer": answer}


def _rc(name, paper_name, tfds, train_size, to_fields, fields, templates,
        cluster=clusters.READING_COMPREHENSION, **kwargs):
  return FlanDataset(name=name, cluster=cluster, paper_name=paper_name, tfds=tfds,
                     train_size=train_size, to_fields=to_fields, fields=fields,
                     templates=templates, **kwargs)


DATASETS = [
    _rc("bool_q", "BoolQ", "super_glue/boolq:1.0.2", 9_427,
        features.classification(("no", "yes"), passage="passage", question="question"),
        ("passage", "question", "answer", "options"), YES_NO),
    _rc("drop", "DROP", "drop:2.0.0", 77_409,
        features.generation("answer", context="passage", question="question"),
        _QA_FIELDS, EXTRACTIVE, metric_fns=metrics.QA, test_split="dev"),
    _rc("multirc", "MultiRC", "super_glue/multirc:1.0.2", 27_243,
        features.classification(("no", "yes"), paragraph="paragraph", question="question",
                                response="answer"),
        ("paragraph", "question", "response", "answer", "options"), RESPONSE_CHECK),
    _rc("openbookqa", "OpenbookQA", "openbookqa:0.1.0", 4_957, _openbookqa,
        ("fact", "question", "answer", "options"), OPEN_BOOK),
    _rc("squad_v1", "SQuAD v1", "squad/v1.1:3.0.0", 87_599,
        lambda ex: {"context": ex["context"], "question": ex["question"],
                    "answer": features.first(ex["answers"]["text"], "unanswerable")},
        _QA_FIELDS, EXTRACTIVE, metric_fns=metrics.QA),
    _rc("squad_v2", "SQuAD v2", "squad/v2.0:3.0.0", 130_319, _squad_v2,
        _QA_FIELDS, EXTRACTIVE_OR_NOT, metric_fns=metrics.QA),
    _rc("cosmos_qa", "CosmosQA", "cosmos_qa:1.0.0", 25_262, _cosmos_qa,
        ("context", "question", "answer", "options"), NARRATIVE_CHOICE,
        cluster=clusters.READING_COMPREHENSION_COMMONSENSE),
    _rc("record", "ReCoRD", "super_glue/record:1.0.2", 100_730, _record,
        ("passage", "query", "answer", "options"), CLOZE_ENTITY,
        cluster=clusters.READING_COMPREHENSION_COMMONSENSE),
]
