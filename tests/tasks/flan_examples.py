"""One or more hand-written raw TFDS examples per FLAN dataset, with the answer their label stands for.

`raw` is written in the dataset's TFDS feature format (the field names of the TFDS builder the dataset
reads, every field present) and goes through the builder's own features to become the tensors TFDS would
yield; a ClassLabel is written by its TFDS name ("entailment", "pos", "choice2"), so the label's meaning
comes from TFDS and not from our code. `answer` is the string the label means, written out by hand: for
classification the option it stands for, for generation the reference text of the example.

The label meanings below are TFDS's (the ClassLabel names of the installed builders, and for the
features that are plain integers, the builder's source and README): each is noted next to its example.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Example:
  dataset: str  # the FLAN dataset (flan_tasks.flan.DATASETS) it is an example of
  raw: Mapping[str, Any]  # one TFDS example, as the dataset's builder encodes it
  answer: str  # the target that every template asking for the answer must give
  options: Optional[Sequence[str]] = None  # for datasets with options: all the options offered


YES_NO = ("yes", "no")
THREE_WAY = ("yes", "it is not possible to tell", "no")
POLARITY = ("negative", "positive")
SCORES = ("0", "1", "2", "3", "4", "5")
TOPICS = ("world", "sports", "business", "science and technology")
QUESTION_TYPES = ("description", "entity", "abbreviation", "person", "number", "location")

_EIFFEL = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889."
_ARC_EASY = ("the Moon", "the Sun", "Mars", "a comet")
_ARC_CHALLENGE = ("condensation", "evaporation", "melting", "freezing")
_RECORD_ENTITIES = ("NASA", "Mars", "Perseverance", "Jezero Crater")
_HELLASWAG = ("drives the car away.", "pours the water into the bucket.", "rinses the soap off the car.",
              "eats a sandwich on the roof.")
_COSMOS = ("She was bored at home.", "She wanted to buy a new phone.", "She had lost her keys.",
           "She wanted to surprise her friend on her birthday.")
_DEFAULT_GEM = {"gem_id": "gem-0", "gem_parent_id": "gem-0", "references": []}

EXAMPLES = [
    # ---------------------------------------------------------------- natural language inference
    # anli: ClassLabel names ["e", "n", "c"] (entailment, neutral, contradiction). Three-way datasets get
    # two examples: two right labels out of three rule out every permutation of the options.
    Example("anli_r1", {"uid": "r1-1", "context": _EIFFEL, "hypothesis": "The Eiffel Tower was completed in 1920.",
                        "label": "c"}, "no", THREE_WAY),
    Example("anli_r1", {"uid": "r1-2", "context": _EIFFEL, "hypothesis": "The Eiffel Tower is painted brown.",
                        "label": "n"}, "it is not possible to tell", THREE_WAY),
    Example("anli_r2", {"uid": "r2-1", "context": _EIFFEL, "hypothesis": "The Eiffel Tower is in France.",
                        "label": "e"}, "yes", THREE_WAY),
    Example("anli_r2", {"uid": "r2-2", "context": _EIFFEL, "hypothesis": "The tower is made of wood.",
                        "label": "c"}, "no", THREE_WAY),
    Example("anli_r3", {"uid": "r3-1", "context": _EIFFEL, "hypothesis": "The tower has a restaurant.",
                        "label": "n"}, "it is not possible to tell", THREE_WAY),
    Example("anli_r3", {"uid": "r3-2", "context": _EIFFEL, "hypothesis": "The tower was finished in the 1880s.",
                        "label": "e"}, "yes", THREE_WAY),
    # super_glue/cb: ["entailment", "contradiction", "neutral"] (not the GLUE order).
    Example("cb", {"idx": 0, "premise": "Mary said that she had never been to Rome.",
                   "hypothesis": "Mary has been to Rome.", "label": "contradiction"}, "no", THREE_WAY),
    Example("cb", {"idx": 1, "premise": "Tom thinks that the train will be late.",
                   "hypothesis": "The train will be late.", "label": "neutral"}, "it is not possible to tell",
            THREE_WAY),
    # glue/mnli and snli: ["entailment", "neutral", "contradiction"].
    Example("mnli", {"idx": 0, "premise": "The museum is closed on Mondays.",
                     "hypothesis": "The museum is popular with tourists.", "label": "neutral"},
            "it is not possible to tell", THREE_WAY),
    Example("mnli", {"idx": 1, "premise": "The museum is closed on Mondays.",
                     "hypothesis": "The museum is open every day of the week.", "label": "contradiction"},
            "no", THREE_WAY),
    Example("snli", {"premise": "A man is playing a guitar on stage.", "hypothesis": "A man is sleeping.",
                     "label": "contradiction"}, "no", THREE_WAY),
    Example("snli", {"premise": "A man is playing a guitar on stage.", "hypothesis": "A person plays music.",
                     "label": "entailment"}, "yes", THREE_WAY),
    # super_glue/rte: ["entailment", "not_entailment"].
    Example("rte", {"idx": 0, "premise": "Dana Reeve, the widow of the actor Christopher Reeve, has died at 44.",
                    "hypothesis": "Christopher Reeve had a wife.", "label": "entailment"}, "yes", YES_NO),
    # glue/wnli: ["not_entailment", "entailment"] (the other way round from RTE).
    Example("wnli", {"idx": 0, "sentence1": "The trophy doesn't fit into the suitcase because it is too small.",
                     "sentence2": "The trophy is too small.", "label": "not_entailment"}, "no", YES_NO),
    # glue/qnli: ["entailment", "not_entailment"]; entailment: the sentence answers the question.
    Example("qnli", {"idx": 0, "question": "When was the Eiffel Tower completed?",
                     "sentence": "The Eiffel Tower was completed in 1889 for the World's Fair.",
                     "label": "entailment"}, "yes", YES_NO),

    # ---------------------------------------------------------------- reading comprehension
    # super_glue/boolq: ["False", "True"].
    Example("bool_q", {"idx": 0, "passage": "The Pacific Ocean is the largest and deepest of Earth's oceans.",
                       "question": "is the pacific ocean smaller than the atlantic ocean", "label": "False"},
            "no", ("no", "yes")),
    Example("drop", {"query_id": "q-1", "passage": "Smith kicked field goals of 23, 41 and 50 yards in the game.",
                     "question": "How many field goals did Smith kick?", "answer": "3",
                     "validated_answers": ["3", "three"]}, "3"),
    # super_glue/multirc: ["False", "True"]; True: the candidate `answer` is a correct response.
    Example("multirc", {"idx": {"paragraph": 0, "question": 0, "answer": 0},
                        "paragraph": "Sam baked a cake for his sister's birthday and gave her a blue scarf.",
                        "question": "What did Sam give his sister?", "answer": "A blue scarf.", "label": "True"},
            "yes", ("no", "yes")),
    # openbookqa: answerKey ["A", "B", "C", "D"] names question.choice_A..choice_D.
    Example("openbookqa", {"question": {"stem": "Which of these conducts electricity best?", "choice_A": "wood",
                                        "choice_B": "copper wire", "choice_C": "a rubber band",
                                        "choice_D": "a plastic spoon"},
                           "fact1": "metal conducts electricity", "humanScore": 1.0, "clarity": 2.0,
                           "turkIdAnonymized": "t1", "answerKey": "B"},
            "copper wire", ("wood", "copper wire", "a rubber band", "a plastic spoon")),
    Example("squad_v1", {"id": "s1", "title": "Normans",
                         "context": "The Normans gave their name to Normandy, a region in France.",
                         "question": "What region is named after the Normans?",
                         "answers": {"text": ["Normandy", "Normandy, a region in France"],
                                     "answer_start": [31, 31]}}, "Normandy"),
    # squad/v2.0: `is_impossible` marks a question the context does not answer (its `answers` are empty).
    Example("squad_v2", {"id": "s2", "title": "Normans",
                         "context": "The Normans gave their name to Normandy, a region in France.",
                         "question": "Who gave their name to Normandy?", "is_impossible": False,
                         "answers": {"text": ["The Normans"], "answer_start": [0]},
                         "plausible_answers": {"text": [], "answer_start": []}}, "The Normans"),
    Example("squad_v2", {"id": "s3", "title": "Normans",
                         "context": "The Normans gave their name to Normandy, a region in France.",
                         "question": "Who gave their name to Brittany?", "is_impossible": True,
                         "answers": {"text": [], "answer_start": []},
                         "plausible_answers": {"text": ["The Normans"], "answer_start": [0]}}, "unanswerable"),
    # cosmos_qa: label ["0", "1", "2", "3"] names answer0..answer3.
    Example("cosmos_qa", {"id": "c1", "context": "Anna hid a cake in the kitchen and put balloons on Jo's door.",
                          "question": "Why did Anna do this?", "answer0": _COSMOS[0], "answer1": _COSMOS[1],
                          "answer2": _COSMOS[2], "answer3": _COSMOS[3], "label": "3"}, _COSMOS[3], _COSMOS),
    # super_glue/record: `answers` are the entities that fill @placeholder.
    Example("record", {"idx": {"passage": 0, "query": 0},
                       "passage": "NASA landed Perseverance on Mars.\n@highlight\nThe rover landed in Jezero Crater",
                       "query": "@placeholder will search for signs of ancient life.",
                       "entities": list(_RECORD_ENTITIES), "answers": ["Perseverance"]},
            "Perseverance", _RECORD_ENTITIES),

    # ---------------------------------------------------------------- closed-book QA
    # ai2_arc: answerKey and choices.label are ClassLabels over ["A", "B", "C", "D", "E"].
    Example("arc_easy", {"id": "arc-e1", "question": "Which object in the sky gives Earth most of its light?",
                         "choices": {"text": list(_ARC_EASY), "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
            "the Sun", _ARC_EASY),
    Example("arc_challenge", {"id": "arc-c1", "question": "Water vapour turning into drops on a cold glass is",
                              "choices": {"text": list(_ARC_CHALLENGE), "label": ["A", "B", "C", "D"]},
                              "answerKey": "A"}, "condensation", _ARC_CHALLENGE),
    Example("natural_questions", {"question": "who wrote the novel pride and prejudice",
                                  "answer": ["Jane Austen", "Austen"]}, "Jane Austen"),
    Example("trivia_qa", {"question": "What is the capital city of Australia?", "question_id": "tq-1",
                          "question_source": "http://example.com",
                          "answer": {"value": "Canberra", "normalized_value": "canberra",
                                     "aliases": ["Canberra", "Canberra, ACT"],
                                     "normalized_aliases": ["canberra", "canberra act"],
                                     "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                                     "type": "WikipediaEntity"},
                          "entity_pages": [], "search_results": []}, "Canberra"),

    # ---------------------------------------------------------------- commonsense and coreference
    # super_glue/copa: ["choice1", "choice2"]; `question` is "cause" or "effect".
    Example("copa", {"idx": 0, "premise": "The man broke his toe.", "question": "cause",
                     "choice1": "He got a hole in his sock.", "choice2": "He dropped a hammer on his foot.",
                     "label": "choice2"}, "He dropped a hammer on his foot.",
            ("He got a hole in his sock.", "He dropped a hammer on his foot.")),
    # hellaswag: `label` (an int32) is the index of the right ending in `endings`.
    Example("hellaswag", {"activity_label": "Washing a car", "source_id": "h1", "split_type": "indomain",
                          "context": "A man sprays soap on a car. He", "endings": list(_HELLASWAG), "label": 2},
            "rinses the soap off the car.", _HELLASWAG),
    # piqa: ["0", "1"], the index of the right solution among sol1, sol2.
    Example("piqa", {"id": "p1", "goal": "To keep bread fresh for longer,",
                     "sol1": "leave it uncovered on the counter.", "sol2": "store it in a sealed bag.",
                     "label": 1}, "store it in a sealed bag.",
            ("leave it uncovered on the counter.", "store it in a sealed bag.")),
    # story_cloze: `label` is the CSV's AnswerRightEnding, copied as is: 1 names the first ending, 2 the
    # second (the builder yields row["AnswerRightEnding"]; the ROCStories files number the endings 1 and 2).
    Example("story_cloze", {"context": "Karen bought a puppy. She named it Max. Max chewed her shoes. Karen was "
                                       "upset at first.",
                            "endings": ["She forgave Max and bought him a toy.", "Karen hates all animals."],
                            "label": 1}, "She forgave Max and bought him a toy.",
            ("She forgave Max and bought him a toy.", "Karen hates all animals.")),
    # definite_pronoun_resolution: ["0", "1"], the index of the referent in `candidates`.
    Example("dpr", {"sentence": "The firemen arrived after the police because they were coming from far away.",
                    "pronoun": "they", "candidates": ["The police", "The firemen"], "label": 1},
            "The firemen", ("The police", "The firemen")),
    # winogrande: ["1", "2"], the raw `answer` naming option1 or option2.
    Example("winogrande", {"sentence": "The bag did not fit in the trunk because the _ was too small.",
                           "option1": "bag", "option2": "trunk", "label": "2"}, "trunk", ("bag", "trunk")),
    # super_glue/wsc.fixed: ["False", "True"]; True: span2 (the pronoun) refers to span1 (the noun).
    Example("wsc", {"idx": 0, "text": "Mark told Pete many lies about himself, which Pete included in his book. "
                                      "He should have been more skeptical.",
                    "span1_index": 2, "span1_text": "Pete", "span2_index": 13, "span2_text": "He",
                    "label": "True"}, "yes", ("no", "yes")),

    # ---------------------------------------------------------------- sentiment
    # imdb_reviews: ["neg", "pos"].
    Example("imdb", {"text": "A warm, funny film with a wonderful cast. I loved every minute of it.",
                     "label": "pos"}, "positive", POLARITY),
    # glue/sst2: ["negative", "positive"].
    Example("sst2", {"idx": 0, "sentence": "a dull , lifeless mess of a movie", "label": "negative"},
            "negative", POLARITY),
    # yelp_polarity_reviews: ["1", "2"]; "Negative polarity is class 1, and positive class 2."
    Example("yelp", {"text": "Cold food, rude staff and a forty minute wait. Never again.", "label": "1"},
            "negative", POLARITY),
    # sentiment140: `polarity` (an int32) is 0 = negative, 2 = neutral, 4 = positive (its README).
    Example("sentiment140", {"text": "just got tickets for the concert tonight!! so happy", "polarity": 4,
                             "date": "Mon Apr 06 22:19:45 PDT 2009", "query": "NO_QUERY", "user": "someone"},
            "positive", POLARITY),

    # ---------------------------------------------------------------- paraphrase
    # glue/mrpc: ["not_equivalent", "equivalent"].
    Example("mrpc", {"idx": 0, "sentence1": "The company said profits rose 10 percent last year.",
                     "sentence2": "Profits climbed 10 percent last year, the company said.",
                     "label": "equivalent"}, "yes", ("no", "yes")),
    # glue/qqp: ["not_duplicate", "duplicate"].
    Example("qqp", {"idx": 0, "question1": "How do I learn to swim?", "question2": "How do I learn to cook?",
                    "label": "not_duplicate"}, "no", ("no", "yes")),
    # paws_wiki: ["different_meaning", "paraphrase"].
    Example("paws_wiki", {"sentence1": "In 1990 he moved from Paris to London.",
                          "sentence2": "He moved from Paris to London in 1990.", "label": "paraphrase"},
            "yes", ("no", "yes")),
    # glue/stsb: `label` is a float similarity from 0 to 5.
    Example("stsb", {"idx": 0, "sentence1": "A woman is slicing an onion.", "sentence2": "A woman is cutting an onion.",
                     "label": 3.8}, "4", SCORES),

    # ---------------------------------------------------------------- struct to text
    Example("common_gen", {**_DEFAULT_GEM, "concept_set_id": 0, "concepts": ["dog", "frisbee", "catch"],
                           "target": "The dog jumps to catch the frisbee."}, "The dog jumps to catch the frisbee."),
    Example("dart", {"input_text": {"table": {"column_header": ["subject", "predicate", "object"],
                                              "content": ["Alimentum", "food", "Italian"], "row_number": [0, 0, 0]}},
                     "target_text": "Alimentum serves Italian food."}, "Alimentum serves Italian food."),
    Example("e2e_nlg", {"input_text": {"table": {"column_header": ["name", "eatType", "area"],
                                                 "content": ["The Eagle", "coffee shop", "riverside"],
                                                 "row_number": [1, 1, 1]}},
                        "target_text": "The Eagle is a coffee shop by the riverside."},
            "The Eagle is a coffee shop by the riverside."),
    Example("web_nlg", {"input_text": {"context": "Airport",
                                       "table": {"column_header": ["subject", "predicate", "object"],
                                                 "content": ["Aarhus Airport", "cityServed", "Aarhus, Denmark"],
                                                 "row_number": [0, 0, 0]}},
                        "target_text": "Aarhus Airport serves the city of Aarhus in Denmark."},
            "Aarhus Airport serves the city of Aarhus in Denmark."),

    # ---------------------------------------------------------------- translation (the answer: the English side)
    Example("para_crawl_ende", {"de": "Das Hotel liegt in der Nähe des Bahnhofs.",
                                "en": "The hotel is near the station."}, "The hotel is near the station."),
    Example("para_crawl_enes", {"es": "El museo abre a las diez.", "en": "The museum opens at ten."},
            "The museum opens at ten."),
    Example("para_crawl_enfr", {"fr": "La chambre était propre et calme.", "en": "The room was clean and quiet."},
            "The room was clean and quiet."),
    Example("wmt14_enfr", {"fr": "Le conseil a adopté la résolution hier.",
                           "en": "The council adopted the resolution yesterday."},
            "The council adopted the resolution yesterday."),
    Example("wmt16_encs", {"cs": "Vláda schválila nový rozpočet.", "en": "The government approved the new budget."},
            "The government approved the new budget."),
    Example("wmt16_ende", {"de": "Die Preise sind im letzten Jahr gestiegen.", "en": "Prices rose last year."},
            "Prices rose last year."),
    Example("wmt16_enfi", {"fi": "Kirjasto on suljettu sunnuntaisin.", "en": "The library is closed on Sundays."},
            "The library is closed on Sundays."),
    Example("wmt16_enro", {"ro": "Trenul a ajuns cu o oră întârziere.", "en": "The train arrived an hour late."},
            "The train arrived an hour late."),
    Example("wmt16_enru", {"ru": "Завтра будет дождь.", "en": "It will rain tomorrow."}, "It will rain tomorrow."),
    Example("wmt16_entr", {"tr": "Toplantı yarın sabah başlayacak.", "en": "The meeting will start tomorrow morning."},
            "The meeting will start tomorrow morning."),

    # ---------------------------------------------------------------- summarization
    Example("aeslc", {"email_body": "Hi team, the quarterly review moves to Friday at 3pm in room 4. Please bring "
                                    "your numbers.", "subject_line": "Quarterly review moved to Friday"},
            "Quarterly review moved to Friday"),
    # ag_news_subset: ["World", "Sports", "Business", "Sci/Tech"].
    Example("ag_news", {"title": "New chip doubles battery life",
                        "description": "Researchers unveiled a processor that uses half the power of current designs.",
                        "label": "Sci/Tech"}, "science and technology", TOPICS),
    Example("cnn_dailymail", {"id": "cnn-1", "publisher": "cnn",
                              "article": "The city council voted on Tuesday to build a new bridge over the river. "
                                         "Work starts in May and should take two years.",
                              "highlights": "Council votes to build a new bridge.\nWork starts in May."},
            "Council votes to build a new bridge.\nWork starts in May."),
    Example("gigaword", {"document": "the central bank raised interest rates by a quarter point on thursday to "
                                     "curb inflation .", "summary": "central bank raises rates"},
            "central bank raises rates"),
    Example("multi_news", {"document": "Report one: the storm hit the coast at dawn. ||||| Report two: thousands "
                                       "lost power as the storm made landfall.",
                           "summary": "A storm hit the coast at dawn, and thousands lost power."},
            "A storm hit the coast at dawn, and thousands lost power."),
    Example("newsroom", {"text": "The local library will stay open until midnight during exam week, officials said.",
                         "summary": "Library extends hours for exams.", "title": "Library hours", "url": "http://x",
                         "date": "20200101", "density_bin": "mixed", "coverage_bin": "high",
                         "compression_bin": "low", "density": 1.5, "coverage": 0.8, "compression": 10.0},
            "Library extends hours for exams."),
    Example("opinion_abstracts_idebate", {"_debate_name": "School uniforms", "_claim_id": "c1",
                                          "_argument_sentences": {"key": ["1", "2"],
                                                                  "value": ["Uniforms reduce bullying.",
                                                                            "They also save parents money."]},
                                          "_claim": "School uniforms should be compulsory."},
            "School uniforms should be compulsory."),
    Example("opinion_abstracts_rotten_tomatoes", {"_movie_name": "Example Movie", "_movie_id": "m1",
                                                  "_critics": {"key": ["a", "b"],
                                                               "value": ["Gripping from start to end.",
                                                                         "A superb lead performance."]},
                                                  "_critic_consensus": "A gripping film with a superb lead."},
            "A gripping film with a superb lead."),
    Example("samsum", {"id": "sam-1", "dialogue": "Ann: Lunch at 1?\nBen: Sure, the usual place.",
                       "summary": "Ann and Ben will have lunch at 1 at the usual place."},
            "Ann and Ben will have lunch at 1 at the usual place."),
    Example("wiki_lingua_en", {**_DEFAULT_GEM, "source": "Fill a pot with water. Bring it to a boil. Add the pasta.",
                               "target": "Boil water and add the pasta.",
                               "source_aligned": {"en": "Fill a pot with water."},
                               "target_aligned": {"en": "Boil water."}}, "Boil water and add the pasta."),
    Example("xsum", {**_DEFAULT_GEM, "xsum_id": "x1",
                     "document": "The club confirmed on Monday that its manager had left after five seasons.",
                     "target": "The club's manager has left after five seasons."},
            "The club's manager has left after five seasons."),

    # ---------------------------------------------------------------- miscellaneous
    Example("coqa", {"source": "mctest", "story": "Lily has a red bike. She rides it to school every day.",
                     "questions": ["What colour is Lily's bike?", "Where does she ride it?"],
                     "answers": {"input_text": ["red", "to school"], "answer_start": [11, 34],
                                 "answer_end": [14, 43]}}, "1. red\n2. to school"),
    Example("quac", {"title": "Ada Lovelace", "section_title": "Early life", "background": "An English mathematician.",
                     "context": "Ada Lovelace was born in London in 1815. CANNOTANSWER",
                     "question": "Where was she born?", "followup": "y", "yesno": "x",
                     "answers": {"text": ["in London"], "answer_start": [22]},
                     "orig_answer": {"text": "born in London", "answer_start": 17}}, "born in London"),
    # trec: label-coarse ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"].
    Example("trec", {"text": "How many moons does Mars have ?", "label-coarse": "NUM", "label-fine": "count"},
            "number", QUESTION_TYPES),
    # glue/cola: ["unacceptable", "acceptable"].
    Example("cola", {"idx": 0, "sentence": "The more books I read, the more I understands.",
                     "label": "unacceptable"}, "no", ("no", "yes")),
    # super_glue/wic: ["False", "True"]; True: `word` has the same sense in both sentences.
    Example("wic", {"idx": 0, "word": "bank", "sentence1": "He sat on the bank of the river.",
                    "sentence2": "She deposited the cheque at the bank.", "start1": 14, "end1": 18, "start2": 32,
                    "end2": 36, "label": "False"}, "no", ("no", "yes")),
    Example("math", {"question": "Solve 3*x + 2 = 11 for x.", "answer": "3"}, "3"),
    # fix_punct reads ag_news_subset: the answer is the description with its punctuation.
    Example("fix_punct", {"title": "Rain delays match", "label": "Sports",
                          "description": "Rain stopped play at Lord's on Monday; the match resumes today."},
            "Rain stopped play at Lord's on Monday; the match resumes today."),
]
