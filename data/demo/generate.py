#!/usr/bin/env python3
"""Generate trainkite's bundled demo dataset (synthetic employee-survey comments).

Run from the repository root::

    python data/demo/generate.py

It (re)writes ``data/demo/comments.csv`` and ``data/demo/holdout.csv``.  The
output is byte-identical on every run: only the standard library is used, all
randomness comes from ``random.Random`` with fixed seeds, and nothing depends on
set/hash ordering.

Every comment is composed from the hand-written fragments below (written for
this project; Apache-2.0 like the rest of the repository): openers, subjects,
topic-specific and generic sentiment-bearing predicates, negated phrasings,
hedges, concrete details, closing remarks and passing mentions of a second
topic.  Mixed comments (one good and one bad point about the same topic) are
labelled neutral; "used to be X, but now Y" comments take the label of Y.

The held-out set is kept apart from the training file in three ways:

* each fragment pool is split, one fragment in five being *reserved*: the
  training file never uses reserved fragments, the held-out set uses them for
  all decorative slots and for a share (HOLDOUT_RESERVED_CORE) of the
  label-bearing ones;
* subject/predicate pairings are split by a stable hash (``combo_reserved``),
  so no pairing in the held-out set occurs in the training file;
* every held-out comment has at least one sentence that never occurs in the
  training file, and no text is shared.
"""

from __future__ import annotations

import csv
import random
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent
COMMENTS_PATH = OUT_DIR / "comments.csv"
HOLDOUT_PATH = OUT_DIR / "holdout.csv"

TRAIN_SEED = 20240611
HOLDOUT_SEED = 7031
N_TRAIN = 1200
N_HOLDOUT = 200
MIN_WORDS = 6
MAX_WORDS = 45
# In the held-out set, probability that a core slot (subject, predicate,
# standalone sentence, attitude verb) uses a reserved fragment.  The remaining
# slots (openers, details, hedges, closers) always use reserved fragments.
HOLDOUT_RESERVED_CORE = 0.2
# Probability that a subject is drawn from the first few ("head") subjects of a
# topic, which makes the everyday words (pay, manager, workload...) frequent.
HEAD_SUBJECT_P = 0.55
N_HEAD_SUBJECTS = 6

SENTIMENTS = ["negative", "neutral", "positive"]
SENTIMENT_WEIGHTS = [0.35, 0.30, 0.35]
TOPICS = ["pay", "management", "workload", "remote_work", "growth", "culture"]
TOPIC_WEIGHTS = [0.18, 0.18, 0.17, 0.16, 0.15, 0.16]
FIELDS = ["comment_id", "text", "sentiment", "topic"]

# ---------------------------------------------------------------------------
# Fragments.  Predicates use {be} (is/are), {has} (has/have), {dont}
# (doesn't/don't), {it} (it/they) and {itbe} (it's/they're) so that they agree
# with singular and plural subjects.
# ---------------------------------------------------------------------------

# (phrase, is_plural)
SUBJECTS = {
    "pay": [
        ("the pay", False),
        ("my salary", False),
        ("our salaries", True),
        ("the annual pay rise", False),
        ("the bonus scheme", False),
        ("overtime pay", False),
        ("the shift allowance", False),
        ("the pension contribution", False),
        ("the salary bands", True),
        ("pay for the night shift", False),
        ("the on-call payments", True),
        ("our benefits package", False),
        ("the cost-of-living adjustment", False),
        ("the commission structure", False),
        ("starting salaries", True),
        ("the pay review process", False),
        ("expense claims", True),
        ("the sick pay policy", False),
        ("holiday pay", False),
        ("the share scheme", False),
    ],
    "management": [
        ("my manager", False),
        ("my line manager", False),
        ("the leadership team", False),
        ("senior management", False),
        ("our team lead", False),
        ("the new director", False),
        ("the managers on my floor", True),
        ("the way decisions get made", False),
        ("communication from leadership", False),
        ("the weekly one-to-ones", True),
        ("my supervisor", False),
        ("the department head", False),
        ("the feedback I get from my manager", False),
        ("the all-hands meetings", True),
        ("middle management", False),
        ("the regional managers", True),
        ("the shift supervisors", True),
        ("the executive team", False),
        ("my skip-level manager", False),
        ("the way priorities are set", False),
    ],
    "workload": [
        ("my workload", False),
        ("the workload", False),
        ("the volume of tickets", False),
        ("the deadlines", True),
        ("the hours", True),
        ("the number of meetings", False),
        ("the on-call rota", False),
        ("staffing levels", True),
        ("the pace of work", False),
        ("the backlog", False),
        ("the amount of overtime", False),
        ("the shift pattern", False),
        ("the amount of admin", False),
        ("project timelines", True),
        ("the weekend cover", False),
        ("the number of projects I juggle", False),
        ("cover for absent colleagues", False),
        ("the month-end close", False),
        ("the caseload", False),
        ("the handover between shifts", False),
    ],
    "remote_work": [
        ("working from home", False),
        ("the hybrid policy", False),
        ("the three-days-in-office rule", False),
        ("remote working", False),
        ("the home office allowance", False),
        ("the VPN", False),
        ("video calls", True),
        ("the desk booking system", False),
        ("flexible start times", True),
        ("the return-to-office plan", False),
        ("our remote setup", False),
        ("the laptop they sent me", False),
        ("working across time zones", False),
        ("hot-desking", False),
        ("hybrid meetings", True),
        ("the work-from-anywhere weeks", True),
        ("the commute on office days", False),
        ("remote onboarding", False),
        ("the chat tools", True),
        ("the policy on working abroad", False),
    ],
    "growth": [
        ("career progression", False),
        ("the training budget", False),
        ("promotion opportunities", True),
        ("the mentoring programme", False),
        ("the learning platform", False),
        ("internal mobility", False),
        ("the promotion process", False),
        ("development conversations", True),
        ("the leadership course", False),
        ("conference funding", False),
        ("the graduate scheme", False),
        ("career paths for engineers", True),
        ("the skills matrix", False),
        ("study leave", False),
        ("the apprenticeship programme", False),
        ("chances to move teams", True),
        ("the development review cycle", False),
        ("support for certifications", False),
        ("the secondment scheme", False),
        ("the career framework", False),
    ],
    "culture": [
        ("the team culture", False),
        ("the atmosphere in the office", False),
        ("my colleagues", True),
        ("the people here", True),
        ("team spirit", False),
        ("the way we treat each other", False),
        ("the inclusion work", False),
        ("the social events", True),
        ("the Friday lunches", True),
        ("trust between teams", False),
        ("the gossip", False),
        ("the welcome new starters get", False),
        ("the recognition scheme", False),
        ("the company values", True),
        ("cross-team collaboration", False),
        ("the vibe on my floor", False),
        ("the charity days", True),
        ("the office banter", False),
        ("the sense of belonging", False),
        ("the way mistakes are handled", False),
    ],
}

# Subjects that are not people: predicates marked "@" (only make sense about
# a person or group of people) are never combined with these.
NON_PERSON_SUBJECTS = [
    "the way decisions get made",
    "communication from leadership",
    "the weekly one-to-ones",
    "the feedback I get from my manager",
    "the all-hands meetings",
    "the way priorities are set",
]

TOPIC_PREDICATES = {
    "pay": {
        "positive": [
            "{be} competitive for the area",
            "went up more than I expected this year",
            "{be} finally in line with the market",
            "{be} generous compared with my last employer",
            "made a real difference to our household budget",
            "{be} fair for the work we do",
            "{has} kept pace with inflation, which I appreciate",
            "{be} one of the best things about working here",
            "{be} transparent and easy to understand",
            "{be} something I'm genuinely happy with",
            "{be} paid promptly and always correct",
            "{be} more than fair for my grade",
        ],
        "negative": [
            "{has} not kept up with the cost of living",
            "{be} well below what other firms offer",
            "{be} a joke for the hours we put in",
            "{be} confusing and nobody can explain it",
            "{has} been frozen for two years",
            "{be} the main reason people are leaving",
            "{be} often late or simply wrong",
            "{dont} reflect the extra responsibility we carry",
            "{be} lower than what new hires get",
            "{be} falling further behind the market",
            "{be} a constant source of stress",
            "{be} insulting given the profits we made",
        ],
        "neutral": [
            "{be} reviewed every April",
            "{be} set by the grading framework",
            "{be} paid on the last working day of the month",
            "{be} roughly in line with the sector average",
            "{be} explained in the staff handbook",
            "{be} benchmarked against the market once a year",
            "{be} handled by the payroll team in Cardiff",
            "changed slightly at the last review",
            "{be} the same as for most of my peers",
            "{be} linked to the company results",
            "{be} shown on the monthly payslip",
            "{be} being looked at by HR this year",
        ],
    },
    "management": {
        "positive": [
            "@{be} supportive and easy to talk to",
            "{be} clear about priorities",
            "@{has} backed me up when things got difficult",
            "@{be} approachable and fair",
            "@{be} honest with us even when the news is bad",
            "{has} made a real effort to keep us informed",
            "@{be} the best I have worked with",
            "@{be} good at removing blockers",
            "@{be} great at recognising good work",
            "@{has} built a lot of trust with the team",
            "@{be} calm under pressure and it rubs off on us",
            "@{be} properly interested in how we are doing",
        ],
        "negative": [
            "@{be} nowhere to be seen when problems come up",
            "@{be} micromanaging every little thing",
            "@{has} lost the trust of the team",
            "{be} inconsistent and hard to read",
            "@{be} quick to blame and slow to help",
            "{dont} explain the reasons behind decisions",
            "@{be} out of touch with the front line",
            "@{has} cancelled our catch-ups three times in a row",
            "@{be} more interested in metrics than people",
            "@{be} making big calls without asking anyone",
            "@{be} dismissive whenever we raise concerns",
            "{be} changing direction every few weeks",
        ],
        "neutral": [
            "changed twice this year",
            "@{be} based in head office",
            "{be} going through a restructure",
            "@{be} new, so it is too early to say",
            "@{be} responsible for three teams now",
            "@{be} mostly hands-off",
            "{be} about what you would expect",
            "@{has} a fairly formal style",
            "{be} covered in the quarterly update",
            "@{be} split between two sites at the moment",
            "{be} run from the regional office",
            "{be} being reorganised again",
        ],
    },
    "workload": {
        "positive": [
            "{be} manageable most weeks",
            "{has} eased off since we hired two more people",
            "{be} well balanced across the team",
            "{be} realistic and properly planned",
            "{be} much more sensible than last year",
            "{be} spread fairly, so nobody is drowning",
            "{be} steady without being overwhelming",
            "{be} planned well in advance",
            "{has} become very reasonable",
            "{be} lighter now that the new tooling is in",
            "{be} sustainable for the first time in ages",
            "{be} easy to keep on top of",
        ],
        "negative": [
            "{be} unsustainable",
            "{be} burning people out",
            "{has} doubled without any extra staff",
            "{be} impossible to keep on top of",
            "{be} the reason I work most evenings",
            "{be} stretching us far too thin",
            "{be} completely unrealistic",
            "{has} made it hard to take any leave",
            "{be} relentless with no quiet periods",
            "{be} leaving no time for proper testing",
            "{be} piling up faster than we can clear {it}",
            "{be} wearing everyone down",
        ],
        "neutral": [
            "{be} higher in December and lower in summer",
            "{be} tracked in the weekly stand-up",
            "{be} seasonal, as you would expect",
            "{be} split between two queues",
            "{be} roughly the same as last quarter",
            "{be} allocated by the team lead on Mondays",
            "{be} measured in story points now",
            "varies a lot from week to week",
            "{be} logged in the planning tool",
            "{be} reviewed at the monthly ops meeting",
            "{be} shared with the Glasgow team",
            "{be} set by the contract targets",
        ],
    },
    "remote_work": {
        "positive": [
            "{has} given me back two hours a day",
            "{be} a huge benefit for my family",
            "{be} flexible and trusting",
            "{be} working really well for our team",
            "{has} made me far more productive",
            "{be} one of the main reasons I stay",
            "{be} reliable and easy to use",
            "{be} handled with a lot of common sense",
            "{has} made childcare so much easier",
            "{be} the best perk we have",
            "{be} set up thoughtfully",
            "{has} improved my focus no end",
        ],
        "negative": [
            "{be} unreliable and drops out every afternoon",
            "{be} enforced without any explanation",
            "{has} left me feeling isolated",
            "{be} a step backwards",
            "{be} applied differently in every team",
            "{be} a nightmare on office days",
            "{has} made collaboration much harder",
            "{be} wasting hours of my week",
            "{be} clunky and slow",
            "{be} rigid for no good reason",
            "{be} driving good people to competitors",
            "{be} a constant headache",
        ],
        "neutral": [
            "{be} set at three office days a week",
            "{be} described on the intranet",
            "{be} under review until the summer",
            "{be} the same for every department",
            "{be} managed through the booking app",
            "{be} agreed with each line manager",
            "came in last October",
            "{be} optional for contractors",
            "{be} covered in the onboarding pack",
            "{be} still being piloted at two sites",
            "{be} handled by the facilities team",
            "{be} part of the new workplace policy",
        ],
    },
    "growth": {
        "positive": [
            "{has} helped me get promoted within a year",
            "{be} genuinely useful",
            "{be} well funded and easy to access",
            "{has} opened doors I did not expect",
            "{be} taken seriously here",
            "{has} given me skills I use every day",
            "{be} clear and fair",
            "{be} better than anywhere I have worked",
            "{has} helped me move into a new role",
            "{be} a real strength of this company",
            "{be} encouraging me to aim higher",
            "{be} well organised and worth the time",
        ],
        "negative": [
            "{be} a dead end",
            "{be} impossible to get approved",
            "{be} vague and depends on who you know",
            "{has} been cut again this year",
            "{be} only open to people in head office",
            "{be} mostly box-ticking",
            "{has} not led to a single promotion in my team",
            "{be} a popularity contest",
            "{be} always the first thing cancelled",
            "{has} stalled for years",
            "{be} a waste of everyone's time",
            "{be} pointless without any budget behind it",
        ],
        "neutral": [
            "{be} run twice a year",
            "{be} managed by HR",
            "{be} available through the learning portal",
            "{be} linked to the annual review",
            "{be} open to anyone after probation",
            "{be} being redesigned this year",
            "{be} explained in the framework document",
            "{be} capped at five days per person",
            "{be} tracked in Workday",
            "{be} the same across all grades",
            "{be} signed off by the department head",
            "{be} discussed at mid-year check-ins",
        ],
    },
    "culture": {
        "positive": [
            "{be} friendly and welcoming",
            "{be} the reason I enjoy coming in",
            "{be} genuinely supportive",
            "{be} inclusive and respectful",
            "{has} made me feel at home from day one",
            "{be} collaborative rather than competitive",
            "{be} a lot of fun",
            "{be} open and honest",
            "{be} better than at any place I have worked",
            "{has} really improved since the summer",
            "{be} warm and down to earth",
            "{be} something we should be proud of",
        ],
        "negative": [
            "{be} cliquey and hard to break into",
            "{be} toxic at times",
            "{has} become very blame-focused",
            "{be} all talk and no action",
            "{be} siloed, with teams guarding their own turf",
            "{be} making people afraid to speak up",
            "{be} cold and unfriendly",
            "{has} gone downhill",
            "{be} tolerant of bad behaviour from senior people",
            "{be} draining",
            "{be} full of passive aggression",
            "{be} leaving newer staff out",
        ],
        "neutral": [
            "{be} organised by the social committee",
            "{be} different in each office",
            "{be} mentioned in the staff handbook",
            "{be} run once a quarter",
            "{be} mostly online these days",
            "{be} what you would expect for a company this size",
            "{be} shaped by a lot of long-serving staff",
            "{be} set out in the values document",
            "{be} coordinated by the people team",
            "{be} changing as we grow",
            "{be} talked about at every town hall",
            "{be} shaped a lot by the Leeds office",
        ],
    },
}

GENERIC_PREDICATES = {
    "positive": [
        "{be} really good",
        "{be} great",
        "{has} improved a lot",
        "{be} better than I expected",
        "{be} excellent",
        "{be} something I value a lot",
        "{be} working well",
        "{be} genuinely good",
        "{be} a real positive",
        "{has} got much better",
        "{be} spot on",
        "{be} really solid",
        "{be} impressive",
        "{be} a highlight of the job",
        "{be} brilliant",
        "{be} good",
        "{be} pretty good",
        "{be} really great",
        "{be} good and getting better",
        "{be} a good thing",
        "{be} great for us",
        "{be} much better now",
        "{be} very good",
    ],
    "negative": [
        "{be} a real problem",
        "{has} got worse",
        "{be} frustrating",
        "{be} terrible",
        "{be} poor",
        "{be} disappointing",
        "{be} a mess",
        "{be} getting worse every month",
        "{be} awful",
        "{be} a big worry for me",
        "{be} really demotivating",
        "{be} a sore point",
        "{be} badly handled",
        "{be} a letdown",
        "{be} dreadful",
        "{be} bad",
        "{be} pretty bad",
        "{be} really poor",
        "{be} worse than ever",
        "{be} unfair",
        "{be} really frustrating",
        "{be} poorly run",
        "{be} very bad",
    ],
    "neutral": [
        "{be} okay",
        "{be} fine, nothing special",
        "{be} about average",
        "{has} not changed much",
        "{be} much the same as before",
        "{be} neither good nor bad",
        "{be} what it is",
        "{be} standard for the industry",
        "{be} about what I expected",
        "{be} acceptable",
        "{be} fairly typical",
        "{be} so-so",
        "{be} middle of the road",
        "{be} adequate",
        "{be} unremarkable",
        "{be} fine",
        "{be} average",
        "{be} okay, I guess",
        "{be} standard",
        "{be} fine for now",
        "{be} pretty average",
        "{be} as expected",
        "{be} neither here nor there",
    ],
}

NEGATED_PREDICATES = {
    "positive": [
        "{be} not bad at all",
        "{be} honestly not a problem",
        "{be} never an issue for me",
        "{be} not something I worry about",
        "{dont} give me any cause for complaint",
        "{be} hard to fault",
        "{be} nothing to complain about",
        "{be} far from the disaster people predicted",
        "{be} not perfect, but {itbe} pretty good",
        "{dont} disappoint",
        "{be} not bad, actually pretty good",
        "{has} never let me down",
        "{be} no problem at all",
    ],
    "negative": [
        "{be} not great",
        "{be} not good enough",
        "{be} nowhere near where {it} should be",
        "{be} not fair",
        "{dont} work for me",
        "{be} not improving",
        "{be} far from ideal",
        "{be} not fit for purpose",
        "{be} never good",
        "{dont} get any better",
        "{be} not good at all",
        "{be} not what we were promised",
        "{has} never been good",
    ],
    "neutral": [
        "could be worse",
        "could be better, could be worse",
        "{be} not bad, not great",
        "{be} not amazing but not awful either",
        "{be} not something I have strong views on",
        "{be} no better or worse than elsewhere",
        "{dont} bother me either way",
        "{be} not the best, not the worst",
        "could be better, I suppose",
        "{be} not great but not terrible",
        "{be} not bad, just average",
        "{be} not exciting, just fine",
        "{be} not especially good or bad",
    ],
}

ATTITUDES = {
    "positive": [
        "I really appreciate",
        "I'm happy with",
        "I can't complain about",
        "I'm impressed by",
        "I have no complaints about",
        "I love",
        "I'm grateful for",
        "I'm pleased with",
        "I rate",
        "I'm very satisfied with",
        "I'm really happy with",
        "I think highly of",
        "I'm glad about",
    ],
    "negative": [
        "I'm fed up with",
        "I'm disappointed with",
        "I'm worried about",
        "I'm not happy with",
        "I'm frustrated by",
        "I've lost patience with",
        "I'm tired of complaining about",
        "I can't stand",
        "I'm unhappy about",
        "I'm losing faith in",
        "I'm really unhappy with",
        "I'm annoyed about",
        "I'm sick of",
    ],
    "neutral": [
        "I don't have strong views on",
        "I have mixed feelings about",
        "I'm undecided about",
        "I don't think much about",
        "I have nothing to add about",
        "I'm fairly neutral on",
        "I'm still making my mind up about",
        "I have no real opinion on",
        "I'm on the fence about",
        "I'm not fussed either way about",
        "I feel okay about",
        "I don't mind",
        "I'm indifferent to",
    ],
}

STANDALONE = {
    "pay": {
        "positive": [
            "Best pay I've had in this industry.",
            "The bonus this year was a pleasant surprise.",
            "Really glad they closed the pay gap between sites.",
            "Getting paid properly for on-call has made a big difference.",
            "The rise in April was more generous than I expected.",
            "For the first time I feel properly paid for what I do.",
            "The new pension match is a really good benefit.",
        ],
        "negative": [
            "I can't afford to live near the office on what I earn.",
            "Nobody has had a proper raise in two years.",
            "New starters are paid more than the people who trained them.",
            "The bonus was cancelled again with no explanation.",
            "Overtime is expected but never paid.",
            "My salary hasn't moved while my rent has gone up twice.",
            "Several of us are on less than the going rate.",
        ],
        "neutral": [
            "Pay review happens in April.",
            "Salaries are paid monthly by bank transfer.",
            "The bonus is calculated on company and personal targets.",
            "We moved to a new payroll provider this year.",
            "Overtime is paid at time and a half after forty hours.",
            "I'm in the middle of my pay band.",
            "Payslips are available on the HR portal.",
        ],
    },
    "management": {
        "positive": [
            "My manager always makes time for me, even on busy days.",
            "Leadership has been really open about the plans for next year.",
            "I feel trusted to do my job without someone looking over my shoulder.",
            "Best manager I've had in my career.",
            "The new director has turned things around.",
            "Our supervisor sticks up for us when it matters.",
            "I always know where I stand with my boss.",
        ],
        "negative": [
            "Decisions come from above with zero consultation.",
            "My manager takes credit for the team's work.",
            "Nobody in leadership gives a straight answer.",
            "We hear about changes through rumours before management tells us.",
            "Too many managers, not enough people doing the work.",
            "My boss only gets in touch when something has gone wrong.",
            "Leadership keeps promising things and never delivers.",
        ],
        "neutral": [
            "My manager changed in January.",
            "We have one-to-ones every two weeks.",
            "Leadership holds an all-hands each quarter.",
            "Our team lead also covers the Bristol site.",
            "The director reports to the COO.",
            "Management updates come through the monthly newsletter.",
            "I've had three different managers in two years.",
        ],
    },
    "workload": {
        "positive": [
            "For once I can finish my work within normal hours.",
            "The extra hires have taken a lot of pressure off.",
            "Work is busy but manageable, which suits me.",
            "Since the new rota I actually get my lunch break.",
            "The team shares the load really well.",
            "Quiet weeks are finally a thing again.",
            "Cutting the pointless meetings freed up loads of time.",
        ],
        "negative": [
            "I haven't taken a full lunch break in months.",
            "We are expected to do the work of three people.",
            "Every week there's a new urgent priority on top of the old ones.",
            "I'm exhausted and so is everyone on my team.",
            "The ticket queue never goes down.",
            "Answering emails at midnight has become normal here.",
            "Two people left and their work just landed on us.",
        ],
        "neutral": [
            "Most of my work comes through the ticket queue.",
            "We work four on, four off on the night shift.",
            "The busiest period is the end of the financial year.",
            "I usually handle about thirty cases a week.",
            "Our sprints are two weeks long.",
            "The team covers weekends on a rota.",
            "Work is allocated at the Monday planning meeting.",
        ],
    },
    "remote_work": {
        "positive": [
            "Being able to work from home has been life changing.",
            "The flexibility lets me do the school run, which means a lot.",
            "Hybrid works really well for our team.",
            "Not commuting every day has done wonders for my health.",
            "Working remotely means I can live near family.",
            "Home days are when I get my best work done.",
            "The home office kit they provided was excellent.",
        ],
        "negative": [
            "Being forced back into the office has killed morale.",
            "Half my office days are spent on video calls anyway.",
            "The VPN drops so often that working from home is a struggle.",
            "There are never enough desks on Tuesdays.",
            "The home office allowance doesn't cover a decent chair.",
            "Commuting in just to sit on calls makes no sense.",
            "Remote staff get left out of most decisions.",
        ],
        "neutral": [
            "I work from home on Mondays and Fridays.",
            "The office is open from seven until seven.",
            "Our team is spread across three time zones.",
            "Hybrid working was introduced in 2021.",
            "Desks are booked through an app.",
            "I live about an hour from the office.",
            "Office days are agreed within each team.",
        ],
    },
    "growth": {
        "positive": [
            "I've learned more here in a year than in five at my last job.",
            "My manager helped me build a real development plan.",
            "Got promoted last cycle and the process felt fair.",
            "The training budget is easy to use and well worth it.",
            "There are plenty of ways to move up here.",
            "Shadowing the senior engineers taught me a huge amount.",
            "They paid for my professional exam without any fuss.",
        ],
        "negative": [
            "I've been in the same role for four years with no path forward.",
            "Training requests just disappear into a black hole.",
            "Promotions go to whoever shouts loudest.",
            "There is no budget for courses or conferences.",
            "I've had to look outside the company to learn anything new.",
            "Nobody has been promoted on our team since 2019.",
            "The only way to progress here is to leave.",
        ],
        "neutral": [
            "I completed the management course last year.",
            "Promotions are decided at the calibration meeting in June.",
            "Everyone gets five training days a year.",
            "I moved from support into QA eighteen months ago.",
            "The mentoring programme pairs people across departments.",
            "There is an annual training allowance per person.",
            "Development plans are agreed at the start of the year.",
        ],
    },
    "culture": {
        "positive": [
            "Great people, great atmosphere.",
            "Everyone is willing to help, no matter how busy they are.",
            "I feel like I belong here.",
            "People actually say thank you here, and it shows.",
            "It's a kind place to work.",
            "I've made real friends on this team.",
            "People here celebrate each other's wins.",
        ],
        "negative": [
            "People are afraid to speak up in meetings.",
            "There's a clear in-crowd and everyone else.",
            "Gossip spreads faster than actual information.",
            "Raising problems gets you labelled as negative.",
            "The values on the wall mean nothing day to day.",
            "Some teams barely talk to each other.",
            "Favouritism is obvious and nobody does anything about it.",
        ],
        "neutral": [
            "The social committee meets once a month.",
            "We have a team lunch on the first Friday.",
            "Most of the team has been here over five years.",
            "The values were refreshed last spring.",
            "There is a staff network for working parents.",
            "We do a charity day every December.",
            "The staff survey runs every autumn.",
        ],
    },
}

OPENERS = [
    "Honestly, ",
    "To be fair, ",
    "Overall, ",
    "For what it's worth, ",
    "In my view, ",
    "From where I sit, ",
    "If I'm honest, ",
    "I'd say ",
    "I think ",
    "In general, ",
    "Right now, ",
    "On balance, ",
    "Generally speaking, ",
    "Personally, I feel ",
    "I feel like ",
]

DETAILS = [
    "since the reorg in March",
    "on the night shift",
    "in the warehouse team",
    "for those of us in Finance",
    "this quarter",
    "compared with last year",
    "in the Leeds office",
    "on the platform team",
    "since the new director started",
    "during peak season",
    "on the support desk",
    "since the merger",
    "in customer operations",
    "for part-time staff",
    "at the Manchester site",
    "for the data team",
    "over the last six months",
    "in my first year",
    "for contractors",
    "on the weekend shift",
    "in the sales team",
    "since we moved buildings",
    "in the London office",
    "for the field engineers",
    "in the contact centre",
]

HEDGES = [
    ", I think",
    ", at least for now",
    ", as far as I can tell",
    ", to be honest",
    ", most of the time",
    ", for the most part",
    ", in my experience",
    ", I suppose",
    ", from what I've seen",
    ", if I'm being fair",
]

CLOSERS = {
    "positive": [
        "Really happy here.",
        "Keep it up.",
        "Long may it continue.",
        "It makes a real difference.",
        "Thanks to everyone involved.",
        "I'd recommend this place to friends.",
        "Credit where it's due.",
        "It's noticed and appreciated.",
        "More of this please.",
        "A big improvement overall.",
        "Really good overall.",
        "Very happy with it.",
        "Great stuff.",
    ],
    "negative": [
        "Something needs to change.",
        "I'm starting to look elsewhere.",
        "Please fix this.",
        "It's hurting morale badly.",
        "I've raised it before and nothing happened.",
        "People are leaving because of it.",
        "This has been going on far too long.",
        "It's really getting to me.",
        "Nobody seems to care.",
        "I'm running out of patience.",
        "Really poor overall.",
        "Very unhappy with it.",
        "Not good enough.",
    ],
    "neutral": [
        "Nothing more to add.",
        "That's all from me.",
        "No strong feelings either way.",
        "Just an observation.",
        "Happy to discuss if useful.",
        "It is what it is.",
        "Not sure what else to say.",
        "Mentioning it for completeness.",
        "That's about it.",
        "Others may see it differently.",
        "Fine overall.",
        "No complaints, no praise.",
        "Average overall.",
    ],
}

# Short evaluative tails that restate the comment's sentiment.
EVAL_TAILS = {
    "positive": [
        ", which is great",
        ", and I'm really happy about that",
        ", which I appreciate",
        ", which is good to see",
        ", and that makes a big difference",
        ", which is a relief",
        ", and I'm glad",
        ", which is brilliant",
    ],
    "negative": [
        ", which is really frustrating",
        ", and it's not okay",
        ", which is a real shame",
        ", and it's getting me down",
        ", which is unacceptable",
        ", and that worries me",
        ", which is poor",
        ", and it's exhausting",
    ],
    "neutral": [
        ", for what it's worth",
        ", as far as I know",
        ", which is standard",
        ", which seems normal",
        ", nothing more to it",
        ", as you'd expect",
        ", which is neither here nor there",
        ", if that's useful",
    ],
}

# Label-neutral phrases that tie a comment to its topic.
TOPIC_CONTEXT = {
    "pay": [
        "when it comes to money",
        "given the cost of living",
        "for someone on my pay grade",
        "compared with salaries elsewhere",
        "in terms of take-home pay",
        "for the money we bring in",
    ],
    "management": [
        "in terms of how we're managed",
        "when it comes to leadership",
        "from a management point of view",
        "as far as day-to-day supervision goes",
        "in terms of decisions from the top",
        "in terms of line management",
    ],
    "workload": [
        "given how busy we are",
        "with the current staffing",
        "in terms of hours",
        "given the volume of work",
        "when deadlines pile up",
        "considering how many tasks land on us",
    ],
    "remote_work": [
        "on home working days",
        "now that we're hybrid",
        "when working remotely",
        "in terms of flexibility",
        "for those of us working from home",
        "on the days I'm not in the office",
    ],
    "growth": [
        "in terms of career development",
        "for anyone wanting to progress",
        "when it comes to learning",
        "for promotion chances",
        "in terms of training",
        "for people trying to build a career here",
    ],
    "culture": [
        "in terms of the people",
        "when it comes to team spirit",
        "for how colleagues get along",
        "in terms of the atmosphere",
        "in terms of how people treat each other",
        "as a place to fit in",
    ],
}

ASIDES = [
    "Also, ",
    "Separately, ",
    "On another note, ",
    "Side note: ",
    "As an aside, ",
    "Unrelated, but ",
    "By the way, ",
    "As for other things, ",
]

CONTRASTS = [", but ", ", although ", ", though ", ", whereas ", ", while "]

# Turnaround comments: the final state decides the label.
TURN_PAST = {
    "positive": [  # used to be bad, now good -> positive
        "used to be a sore point",
        "used to be a real problem",
        "{was} a mess last year",
        "used to drive me mad",
        "{was} pretty poor when I joined",
    ],
    "negative": [  # used to be good, now bad -> negative
        "used to be one of the best things here",
        "{was} great when I joined",
        "used to be a real strength",
        "{was} fine until recently",
        "used to be something I'd brag about",
    ],
}
# Fragments without {it}/{itbe} also suit people ("my manager ... it" does not).
TURN_NOW = {
    "positive": [
        "{it} {has} improved a lot",
        "things are much better",
        "things have really turned around",
        "{itbe} genuinely good",
        "{it} {has} come on leaps and bounds",
        "the difference is night and day",
        "things have improved no end",
        "{itbe} really good",
        "{itbe} a lot better",
    ],
    "negative": [
        "{it} {has} gone downhill",
        "things are much worse",
        "things have really slipped",
        "{itbe} a shambles",
        "{it} {has} fallen apart",
        "things have gone downhill fast",
        "the whole thing has gone wrong",
        "{itbe} really poor",
        "{itbe} a lot worse",
    ],
}
TURN_WHEN = [
    "",
    " since the reorg",
    " after the new hires",
    " this year",
    " since the review",
    " over the last few months",
    " since the merger",
]


# ---------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------


def split_pool(pool: list, reserved: bool) -> list:
    """Deterministically split a fragment list: every 5th item (index 2, 7,
    12, ...) is reserved for the held-out set."""
    if len(pool) < 4:
        return list(pool)
    return [x for i, x in enumerate(pool) if (i % 5 == 2) == reserved]


def conjugate(pred: str, plural: bool) -> str:
    return pred.format(
        be="are" if plural else "is",
        has="have" if plural else "has",
        dont="don't" if plural else "doesn't",
        it="they" if plural else "it",
        itbe="they're" if plural else "it's",
        was="were" if plural else "was",
    )


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def combo_reserved(subject: str, predicate: str) -> bool:
    """About one subject/predicate pairing in five is kept for the held-out
    set only (crc32 is stable across runs and Python versions)."""
    return zlib.crc32(f"{subject}|{predicate}".encode()) % 5 == 0


class Composer:
    def __init__(self, rng: random.Random, holdout: bool):
        self.rng = rng
        self.holdout = holdout

    # -- pool access -------------------------------------------------------
    def _pick(self, pool: list, core: bool):
        """Pick from the training part of a pool, or (held-out set) from the
        reserved part: always for non-core slots, with probability
        HOLDOUT_RESERVED_CORE for core slots."""
        if not self.holdout:
            return self.rng.choice(split_pool(pool, reserved=False))
        if not core or self.rng.random() < HOLDOUT_RESERVED_CORE:
            return self.rng.choice(split_pool(pool, reserved=True))
        return self.rng.choice(split_pool(pool, reserved=False))

    def subject(self, topic, avoid=None):
        pool = SUBJECTS[topic]
        if self.rng.random() < HEAD_SUBJECT_P:
            pool = pool[:N_HEAD_SUBJECTS]
        while True:
            s = self._pick(pool, core=True)
            if s != avoid:
                return s

    def predicate(self, topic, sentiment):
        r = self.rng.random()
        if r < 0.55:
            pool = TOPIC_PREDICATES[topic][sentiment]
        elif r < 0.83:
            pool = GENERIC_PREDICATES[sentiment]
        else:
            pool = NEGATED_PREDICATES[sentiment]
        return self._pick(pool, core=True)

    def clause(self, topic, sentiment, subj=None):
        phrase, plural = subj or self.subject(topic)
        for _ in range(200):
            pred = self.predicate(topic, sentiment)
            if pred.startswith("@"):
                if phrase in NON_PERSON_SUBJECTS:
                    continue
                pred = pred[1:]
            # Subject/predicate pairings are disjoint between the two files.
            if combo_reserved(phrase, pred) == self.holdout:
                break
        else:
            raise RuntimeError(f"no predicate for {phrase!r} ({topic}/{sentiment})")
        return f"{phrase} {conjugate(pred, plural)}"

    def decorate(self, body: str, topic: str, sentiment: str, allow_opener=True) -> str:
        """Add an optional opener/detail/topic context/hedge to a lower-case
        clause and return a finished sentence."""
        rng = self.rng
        context = self._pick(TOPIC_CONTEXT[topic], core=False) if rng.random() < 0.3 else None
        if context and body.split()[-1] != context.split()[0]:  # no "on on"
            body = f"{body} {context}"
        detail = self._pick(DETAILS, core=False) if rng.random() < 0.3 else None
        # At most one trailing phrase: with a topic context the detail goes first.
        front_detail = detail is not None and (context is not None or rng.random() < 0.4)
        if front_detail:
            body = f"{cap(detail)}, {body}"
        else:
            if allow_opener and rng.random() < 0.35:
                body = self._pick(OPENERS, core=False) + body
            if detail:
                body = f"{body} {detail}"
        r = rng.random()
        if r < 0.28:
            body += self._pick(EVAL_TAILS[sentiment], core=True)
        elif r < 0.42:
            body += self._pick(HEDGES, core=False)
        return cap(body) + "."

    # -- first sentences -----------------------------------------------------
    def first_sentence(self, topic, sentiment) -> str:
        rng = self.rng
        r = rng.random()
        if sentiment == "neutral":
            # subject+predicate, standalone fact, attitude, mixed
            if r < 0.38:
                return self.decorate(self.clause(topic, sentiment), topic, sentiment)
            if r < 0.58:
                return self._pick(STANDALONE[topic][sentiment], core=True)
            if r < 0.81:
                att = self._pick(ATTITUDES[sentiment], core=True)
                return self.decorate(f"{att} {self.subject(topic)[0]}", topic, sentiment, allow_opener=False)
            return self.mixed(topic)
        if r < 0.5:
            return self.decorate(self.clause(topic, sentiment), topic, sentiment)
        if r < 0.68:
            return self._pick(STANDALONE[topic][sentiment], core=True)
        if r < 0.85:
            att = self._pick(ATTITUDES[sentiment], core=True)
            return self.decorate(f"{att} {self.subject(topic)[0]}", topic, sentiment, allow_opener=False)
        return self.turnaround(topic, sentiment)

    def mixed(self, topic) -> str:
        """A same-topic comment with one good and one bad point: neutral."""
        first, second = ("positive", "negative") if self.rng.random() < 0.5 else ("negative", "positive")
        s1 = self.subject(topic)
        s2 = self.subject(topic, avoid=s1)
        conj = self._pick(CONTRASTS, core=False)
        body = f"{self.clause(topic, first, s1)}{conj}{self.clause(topic, second, s2)}"
        return cap(body) + "."

    def turnaround(self, topic, sentiment) -> str:
        phrase, plural = self.subject(topic)
        past = conjugate(self._pick(TURN_PAST[sentiment], core=True), plural)
        person = topic == "management" and phrase not in NON_PERSON_SUBJECTS
        while True:
            now = self._pick(TURN_NOW[sentiment], core=True)
            if not (person and "{it" in now):
                break
        now = conjugate(now, plural)
        when = self._pick(TURN_WHEN, core=False)
        return cap(f"{phrase} {past}, but{when} {now}") + "."

    # -- second sentences ----------------------------------------------------
    def second_sentence(self, topic, sentiment):
        """Return (sentence, may_go_first) or None."""
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            return None
        if r < 0.86:
            return self._pick(CLOSERS[sentiment], core=True), False
        # A passing mention of another topic, usually neutral and factual.
        other = rng.choice([t for t in TOPICS if t != topic])
        q = rng.random()
        if q < 0.62:
            s2 = "neutral"
        elif q < 0.9:
            s2 = sentiment
        else:
            s2 = rng.choice(SENTIMENTS)
        if rng.random() < 0.35:
            return self._pick(STANDALONE[other][s2], core=True), s2 == "neutral"
        aside = self._pick(ASIDES, core=False)
        return cap(aside + self.clause(other, s2)) + ".", False

    def comment(self, topic, sentiment) -> str:
        parts = [self.first_sentence(topic, sentiment)]
        second = self.second_sentence(topic, sentiment)
        if second:
            sentence, may_go_first = second
            if may_go_first and self.rng.random() < 0.3:
                parts.insert(0, sentence)  # context first, main point second
            else:
                parts.append(sentence)
        text = " ".join(parts)
        return re.sub(r"\s+", " ", text).strip()


def n_words(text: str) -> int:
    return len(text.split())


def quota(n: int, labels: list[str], weights: list[float]) -> list[str]:
    """n labels in (almost exactly) the given proportions, in label order."""
    counts = [int(n * w) for w in weights]
    for i in sorted(range(len(labels)), key=lambda i: -(n * weights[i] - counts[i]))[: n - sum(counts)]:
        counts[i] += 1
    return [lab for lab, c in zip(labels, counts, strict=True) for _ in range(c)]


def sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.])\s+", text) if x]


def generate(n: int, seed: int, holdout: bool, exclude: list[str]) -> list[dict]:
    """Make n rows.  ``exclude`` holds the texts of an earlier file: no text is
    reused, and (held-out set) every comment has at least one sentence that
    never occurs in them."""
    rng = random.Random(seed)
    comp = Composer(rng, holdout=holdout)
    prefix = "h" if holdout else "c"
    seen = set(exclude)
    seen_sentences = {x for t in exclude for x in sentences(t)}
    # Label plan: fixed proportions, sentiment and topic shuffled independently.
    sentiments = quota(n, SENTIMENTS, SENTIMENT_WEIGHTS)
    topics = quota(n, TOPICS, TOPIC_WEIGHTS)
    rng.shuffle(sentiments)
    rng.shuffle(topics)
    rows = []
    for sentiment, topic in zip(sentiments, topics, strict=True):
        for _ in range(50):
            text = comp.comment(topic, sentiment)
            if not MIN_WORDS <= n_words(text) <= MAX_WORDS or text in seen:
                continue
            if holdout and all(x in seen_sentences for x in sentences(text)):
                continue
            break
        else:
            raise RuntimeError(f"could not make a new comment for {topic}/{sentiment}")
        seen.add(text)
        rows.append(
            {
                "comment_id": f"{prefix}{len(rows) + 1:05d}",
                "text": text,
                "sentiment": sentiment,
                "topic": topic,
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writeheader()
        w.writerows(rows)


def summarise(name: str, rows: list[dict]) -> None:
    n = len(rows)
    print(f"{name}: {n} rows")
    for col, labels in (("sentiment", SENTIMENTS), ("topic", TOPICS)):
        c = Counter(r[col] for r in rows)
        print(f"  {col}: " + ", ".join(f"{k}={c[k]} ({100 * c[k] / n:.1f}%)" for k in labels))
    lengths = [n_words(r["text"]) for r in rows]
    print(f"  words per comment: min={min(lengths)} max={max(lengths)} mean={sum(lengths) / n:.1f}")


def main() -> int:
    train = generate(N_TRAIN, TRAIN_SEED, holdout=False, exclude=[])
    holdout = generate(N_HOLDOUT, HOLDOUT_SEED, holdout=True, exclude=[r["text"] for r in train])
    write_csv(COMMENTS_PATH, train)
    write_csv(HOLDOUT_PATH, holdout)
    summarise(COMMENTS_PATH.name, train)
    summarise(HOLDOUT_PATH.name, holdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
