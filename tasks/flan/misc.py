"""Miscellaneous: CoQA, QuAC, TREC, CoLA, WiC, math (linear equations), fix punctuation."""

import tensorflow as tf

from flan_tasks import metrics
from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# story, questions (numbered) -> answers (numbered)
CONVERSATION_QA = [
    T("{story}\n\nAnswer these questions in order:\n{questions}"),
    T("Read the text and answer each numbered question.\n\n{story}\n\n{questions}"),
    T("Story: {story}\nQuestions:\n{questions}\nAnswers:"),
    T("{questions}\n\nAnswer the questions above using this passage:\n{story}"),
    T("Here is a passage.\n{story}\nGive a short answer to each of the following.\n{questions}"),
    T("Use the story to respond to every question, numbering your answers.\n\n{story}\n\n"
      "{questions}"),
    T("Text: {story}\n\n{questions}\n\nWrite the numbered answers."),
    T("Answer the questions one after another; they are about this text: {story}\n{questions}"),
    T("{story}\n\nWrite a numbered list of questions about the text whose answers are:\n{answer}",
      "{questions}"),
]

# title, context, question -> answer (from a Wikipedia section)
SECTION_QA = [
    T("{title}\n\n{context}\n\nQ: {question}\nA:"),
    T("Read this section of an article about {title} and answer the question.\n\n{context}\n\n"
      "{question}"),
    T("Article: {title}\nSection: {context}\nQuestion: {question}"),
    T("{question}\n\nAnswer with a quote from this passage about {title}:\n{context}"),
    T("Here is some text about {title}: {context}\nWhat would you say to: {question}"),
    T("Background on {title}:\n{context}\n\nSomeone asks \"{question}\". Reply using the text."),
    T("Use the passage to answer. If it does not say, reply CANNOTANSWER.\n{context}\n{question}"),
    T("{context}\n\nQuestion about {title}: {question}"),
    T("{context}\n\nAsk a question about {title} that this text answers with: {answer}",
      "{question}"),
    T("Write a question whose answer, according to the text, is \"{answer}\".\n\n{context}",
      "{question}"),
]

# question -> its coarse type
QUESTION_TYPE = [
    T("What type of thing is this question asking for?\n\n{question}\n{options_}"),
    T("Question: {question}\nWhich category does the answer fall into?\n{options_}"),
    T("{question}\n\nWould the answer be a description, an entity, an abbreviation, a person, "
      "a number or a location?\n{options_}"),
    T("Classify the question by the kind of answer it expects.\n{question}\n{options_}"),
    T("Here is a question: \"{question}\" What is it about?\n{options_}"),
    T("Is the answer to \"{question}\" a number, a person, a place, or something else?\n"
      "{options_}"),
    T("Pick the answer type of this question. {question}\n{options_}"),
    T("{question}\nThe answer to this is a kind of:\n{options_}"),
    T("Write a question whose answer is a {answer}.", "{question}"),
]

# sentence -> no / yes (is it grammatical?)
ACCEPTABILITY = [
    T("{sentence}\n\nIs this sentence grammatically correct?\n{options_}"),
    T("Would a linguist accept the following sentence as grammatical English?\n\n{sentence}\n"
      "{options_}"),
    T("Sentence: \"{sentence}\"\nIs it acceptable English?\n{options_}"),
    T("Check the grammar: {sentence}\nIs it fine?\n{options_}"),
    T("Here is a sentence. {sentence}\nDoes it follow the rules of English grammar?\n{options_}"),
    T("Decide whether the sentence below is well formed.\n{sentence}\n{options_}"),
    T("Is \"{sentence}\" something a native speaker would say?\n{options_}"),
    T("{sentence}\nGrammatical?\n{options_}"),
    T("Is the following a correct English sentence? {sentence}\n{options_}"),
    T("Write an English sentence; is it grammatical? {answer}.", "{sentence}"),
]

# word, first, second -> no / yes (same sense?)
WORD_SENSE = [
    T("Does the word \"{word}\" mean the same thing in these two sentences?\n{first}\n{second}\n"
      "{options_}"),
    T("Sentence A: {first}\nSentence B: {second}\nIs \"{word}\" used with the same meaning in "
      "both?\n{options_}"),
    T("{first}\n{second}\n\nSame sense of \"{word}\" in the sentences above?\n{options_}"),
    T("Here is a word: {word}. Is its meaning identical in \"{first}\" and \"{second}\"?\n"
      "{options_}"),
    T("Decide whether \"{word}\" keeps its sense across these sentences.\n1. {first}\n"
      "2. {second}\n{options_}"),
    T("Look at how \"{word}\" is used.\n{first}\n{second}\nDoes it mean the same?\n{options_}"),
    T("In \"{first}\" and in \"{second}\", does {word} have one meaning?\n{options_}"),
    T("Word: {word}\nFirst use: {first}\nSecond use: {second}\nSame meaning?\n{options_}"),
    T("Sentence: {first}\nWrite another sentence using \"{word}\"; is the meaning the same? "
      "{answer}.", "{second}"),
]

# question -> answer (a number)
MATH = [
    T("{question}"),
    T("Solve this problem: {question}"),
    T("Math problem: {question}\nAnswer:"),
    T("{question}\n\nWhat is the solution?"),
    T("Work out the answer. {question}"),
    T("Here is an equation to solve. {question}"),
    T("Q: {question}\nA:"),
    T("Find the value of the unknown. {question}"),
    T("Compute: {question}"),
    T("Write an algebra problem whose solution is {answer}.", "{question}"),
]

# text (lower-cased, no punctuation) -> the original text
FIX_PUNCTUATION = [
    T("Add punctuation and capital letters: {text}"),
    T("{text}\n\nRewrite the text above with proper punctuation."),
    T("This text has lost its punctuation and capitalisation. Restore them.\n\n{text}"),
    T("Fix the punctuation: {text}"),
    T("Text without punctuation: {text}\nCorrectly punctuated:"),
    T("Please write this with commas, full stops and capitals where they belong: {text}"),
    T("Make the following readable by adding punctuation.\n{text}"),
    T("{text}\nWhat is the properly punctuated version?"),
    T("Remove all punctuation and write in lower case: {answer}", "{text}"),
]

QUESTION_TYPES = ("description", "entity", "abbreviation", "person", "number", "location")


def _coqa(ex):
  return {"story": ex["story"], "questions": features.numbered(ex["questions"]),
          "answer": features.numbered(ex["answers"]["input_text"])}


def _quac(ex):
  title = tf.strings.join([ex["title"], ex["section_title"]], separator=": ")
  return {"title": title, "context": ex["context"], "question": ex["question"],
          "answer": ex["orig_answer"]["text"]}


def _fix_punctuation(ex):
  return {"text": features.strip_punctuation(ex["description"]), "answer": ex["description"]}


DATASETS = [
    FlanDataset(
        name="coqa", cluster=clusters.MISC, paper_name="CoQA", tfds="coqa:1.0.0",
        train_size=7_199, to_fields=_coqa, fields=("story", "questions", "answer"),
        templates=CONVERSATION_QA + [
            T("Passage:\n{story}\n\nRespond to the questions below briefly, keeping their "
              "numbers.\n{questions}")],
        metric_fns=metrics.QA, test_split="test"),
    FlanDataset(
        name="quac", cluster=clusters.MISC, paper_name="QuAC", tfds="quac:1.0.0",
        train_size=83_568, to_fields=_quac, fields=("title", "context", "question", "answer"),
        templates=SECTION_QA, metric_fns=metrics.QA),
    FlanDataset(
        name="trec", cluster=clusters.MISC, paper_name="TREC", tfds="trec:1.0.0",
        train_size=5_452,
        to_fields=features.classification(QUESTION_TYPES, label="label-coarse", question="text"),
        fields=("question", "answer", "options"), templates=QUESTION_TYPE + [
            T("Which answer type fits the question \"{question}\" best?\n{options_}")],
        test_split="test"),
    FlanDataset(
        name="cola", cluster=clusters.MISC, paper_name="CoLA", tfds="glue/cola:2.0.0",
        train_size=8_551,
        to_fields=features.classification(("no", "yes"), sentence="sentence"),
        fields=("sentence", "answer", "options"), templates=ACCEPTABILITY),
    FlanDataset(
        name="wic", cluster=clusters.MISC, paper_name="WiC", tfds="super_glue/wic:1.0.2",
        train_size=5_428,
        to_fields=features.classification(("no", "yes"), word="word", first="sentence1",
                                          second="sentence2"),
        fields=("word", "first", "second", "answer", "options"), templates=WORD_SENSE + [
            T("Two sentences share the word \"{word}\".\n{first}\n{second}\nDo they use it in "
              "the same sense?\n{options_}")]),
    FlanDataset(
        name="math", cluster=clusters.MISC, paper_name="Math (linear equations)",
        tfds="math_dataset/algebra__linear_1d:1.0.0", train_size=1_999_998,
        to_fields=features.generation("answer", question="question"),
        fields=("question", "answer"), templates=MATH, test_split="test"),
    FlanDataset(
        name="fix_punct", cluster=clusters.MISC, paper_name="Fix Punctuation (NLG)",
        tfds="ag_news_subset:1.0.0", train_size=120_000, to_fields=_fix_punctuation,
        fields=("text", "answer"), templates=FIX_PUNCTUATION + [
            T("Punctuate: {text}")],
        metric_fns=metrics.GENERATION, test_split="test"),
]
