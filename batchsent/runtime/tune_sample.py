"""The built-in sample ``batchsent tune`` measures on when no ``--sample`` is given.

520 English product reviews, the same on every machine: a fixed seed joins sentences
written for batchsent into short reviews (one sentence), medium ones (2-6) and long ones
(10-44 sentences, past 512 tokens at the long end), so a variant's speed is measured over
the lengths a nightly file holds and its agreement over plain, mixed and near-tie texts.
"""

from __future__ import annotations

import random

SAMPLE_ROWS = 520

SENTENCES = (
    "Boils a full litre in under three minutes, and the handle stays cool.",
    "Stopped working after two weeks and the lid never closed properly.",
    "Quiet, quick and easy to clean.",
    "The cord could be a little longer, but that is my only complaint.",
    "The plastic smell would not go away even after a dozen uses.",
    "Arrived a day early and was packed with care.",
    "The box was crushed and one of the legs was bent.",
    "Exactly as described, and it looks even better in person.",
    "I returned it the same afternoon.",
    "Customer service replaced the faulty part within a week, no questions asked.",
    "Nobody answered my emails for a month.",
    "The battery lasts all weekend on a single charge.",
    "The battery barely makes it through a morning.",
    "It is fine for the price, nothing more and nothing less.",
    "I would buy it again without thinking twice.",
    "I regret not reading the reviews before ordering.",
    "The instructions were clear and it took ten minutes to assemble.",
    "Half the screws were missing and the holes did not line up.",
    "My kids love it and use it every single day.",
    "It broke the first time my son picked it up.",
    "The colour is a little darker than in the photos, which I actually prefer.",
    "The colour faded after the second wash.",
    "Comfortable from the first wear, no breaking in needed.",
    "The seams started to come apart within a month.",
    "Sound quality is rich and clear, even at high volume.",
    "There is a constant hiss in the left earbud.",
    "Setup on my phone was painless.",
    "The app keeps logging me out and losing my settings.",
    "Not bad, but I expected more for what it costs.",
    "Surprisingly sturdy for something this light.",
    "It wobbles on any surface that is not perfectly flat.",
    "The blade is still sharp after a year of daily use.",
    "It rusted after being left in the sink overnight.",
    "Heats evenly and the non-stick coating really works.",
    "Everything sticks to it, even with plenty of oil.",
    "The fabric feels cheap, but it does the job.",
    "Honestly one of the best purchases I have made this year.",
    "A complete waste of money.",
    "It works, although the buttons are stiff and the display is hard to read in sunlight.",
    "I was sceptical at first, but it won me over after a week.",
    "It looked great at first, but the problems started after a few days.",
    "The size chart is accurate, so order your usual size.",
    "Runs two sizes small, so I had to send it back.",
    "Delivery was slow, but the product itself is excellent.",
    "Great product, terrible packaging.",
    "The smell of the leather is wonderful.",
    "It makes a rattling noise whenever the fan speeds up.",
    "My old one lasted ten years, and I hope this one does too.",
    "I have had it for six months and it still works like new.",
    "It is not perfect, but I would not go back to the old one.",
    "The lid is a pain to open with wet hands.",
    "Brews a strong cup of coffee in about a minute.",
    "The coffee tastes burnt no matter which setting I use.",
    "Fits perfectly in the small space beside my desk.",
    "Much bigger than I expected, and it does not fit anywhere.",
    "Good value, and the warranty gives me peace of mind.",
    "The warranty claim was rejected on a technicality.",
    "Battery, screen and speakers are all a step up from my last tablet.",
    "The screen scratches if you so much as look at it.",
    "Okay.",
    "Love it!",
    "Do not buy.",
    "Meh.",
    "Five stars, would recommend to anyone.",
    "One star, and only because zero is not an option.",
    "It does what it says on the box.",
    "The zip broke on the first trip.",
    "Kept me warm on a freezing night in the mountains.",
    "It is loud, but it cleans the floor better than anything I have owned.",
    "Not sure yet, I will update this review after a few more weeks.",
)


def builtin_sample(rows: int = SAMPLE_ROWS, seed: int = 2026) -> list[str]:
    """``rows`` reviews of one to 44 sentences, the same list on every call with the same arguments."""
    rng = random.Random(seed)
    reviews = []
    for index in range(rows):
        share = index % 20
        if share < 8:
            count = 1
        elif share < 15:
            count = rng.randint(2, 6)
        else:
            count = rng.randint(10, 44)
        reviews.append(" ".join(rng.choice(SENTENCES) for _ in range(count)))
    rng.shuffle(reviews)
    return reviews
