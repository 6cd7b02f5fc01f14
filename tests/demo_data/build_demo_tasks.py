"""Build the built-in demo tasks shipped inside ``prompt_core/demo_tasks``.

This generator lives with the tests, not in the library: the package ships only its output;
``tests/test_data.py`` checks that the shipped files are exactly what it writes.

This script is the single source of truth for the six small classification data sets that
prompt-transfer ships as built-in demo tasks (``movie_sentiment``, ``product_sentiment``,
``everyday_nli``, ``fact_nli``, ``paraphrase_pairs`` and ``news_topic``).  All text below was
written for the prompt-transfer project: it is synthetic English and contains no third-party
data.  The passages in ``fact_nli`` state well-known facts or describe invented people and
places; the news items in ``news_topic`` are invented.

How the examples are made:

* ``movie_sentiment`` and ``product_sentiment`` mix complete hand-written reviews with
  reviews composed from hand-written clauses (aspect clauses, verdicts, neutral openers and
  mild contrasting remarks such as "the first act is a little slow, but ...").  Every
  fragment is used only a few times.
* ``everyday_nli`` uses hand-written premises, each with one entailed, one neutral and one
  contradicting hypothesis (SNLI style).  All hypotheses of a premise go to the same split.
* ``fact_nli`` uses hand-written passages, each with one entailed claim and one claim that is
  not entailed (contradicted or simply not supported).  Both stay in the same split.
* ``paraphrase_pairs`` and ``news_topic`` are fully hand-written; every sentence in
  ``paraphrase_pairs`` occurs once.

Each task folder gets ``task.json`` plus ``train.jsonl`` (160 rows), ``validation.jsonl``
(40) and ``test.jsonl`` (60).  Labels are as balanced as the class count allows in every
split and rows are shuffled with a fixed seed.  Run

    python -m tests.demo_data.build_demo_tasks            # or: ... --out DIR

to regenerate every file byte for byte.  Data lines that are indented continue the line
above them (this keeps the source within the project's line-length limit).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20240611
OUT_DIR = Path(__file__).resolve().parents[2] / "prompt_core" / "demo_tasks"
SPLITS: tuple[tuple[str, int], ...] = (("train", 160), ("validation", 40), ("test", 60))
PROVENANCE = (
    "written for the prompt-transfer project (built-in demo task); "
    "synthetic English, no third-party data"
)


def _groups(block: str) -> list[list[str]]:
    """Split a data block into blank-line separated groups of logical lines."""
    groups: list[list[str]] = []
    current: list[str] = []
    for raw in block.splitlines():
        if not raw.strip():
            if current:
                groups.append(current)
                current = []
            continue
        if raw[0].isspace():
            if not current:
                raise ValueError(f"continuation line without a line to continue: {raw!r}")
            current[-1] = f"{current[-1]} {raw.strip()}"
        else:
            current.append(raw.strip())
    if current:
        groups.append(current)
    return groups


def _items(block: str) -> list[str]:
    """All logical lines of a block, ignoring blank lines."""
    return [line for group in _groups(block) for line in group]


def _records(block: str, size: int) -> list[tuple[str, ...]]:
    """Blank-line separated records of exactly ``size`` logical lines each."""
    records = [tuple(group) for group in _groups(block)]
    for record in records:
        if len(record) != size:
            raise ValueError(f"expected {size} lines per record, got {record!r}")
    return records


# ---------------------------------------------------------------------------------------------
# movie_sentiment
# ---------------------------------------------------------------------------------------------

MOVIE_FULL_POSITIVE = _items("""
An absolute joy from start to finish, and I would happily watch it again tomorrow.
I laughed, I cried, and I called my sister the moment the credits rolled to tell her to see it.
A smart, tender little film that trusts its audience.
The best thing I've seen in a theater in years.
Gorgeous to look at and surprisingly moving.
Two and a half hours flew by; I didn't want it to end.
A rare sequel that actually improves on the original.
Funny, sharp and full of heart, this one is a crowd-pleaser in the best sense.
My kids and I both loved it, which almost never happens.
It has no right to be this charming, but it absolutely is.
The final twenty minutes left the whole audience applauding.
A beautifully acted drama that stayed with me for days.
Tense, clever and perfectly paced from the opening scene.
Every frame looks like a painting, and the story is just as rich.
I went in with low expectations and came out a fan.
This is how you make a thriller: lean, tight and genuinely scary.
A warm, generous comedy with a big heart and a great cast.
One of those rare films where every character feels like a real person.
Easily the most fun I've had at the movies this summer.
The director finally delivers the masterpiece everyone knew she had in her.
Quietly devastating and completely worth the tears.
A delightful animated adventure that adults will enjoy as much as children.
I've already bought tickets to see it a second time.
Bold, strange and wonderful; nothing else out there looks like it.
The chemistry between the two leads is electric from their very first scene.
A documentary that is as entertaining as it is informative.
It made me want to call my dad, and I mean that as high praise.
Wickedly funny satire with a surprising amount of heart underneath.
A slow burn, but the payoff is absolutely worth the wait.
The action scenes are thrilling and easy to follow, a rarity these days.
Loved every minute of this heartfelt coming-of-age story.
A near-perfect adaptation that honors the book without being a slave to it.
You'll leave the theater humming the songs, and you won't mind one bit.
Ten out of ten, no notes.
Clever writing, brilliant performances, and a soundtrack I've had on repeat all week.
Surprisingly thoughtful for a superhero movie, and a lot of fun too.
Even at nearly three hours, I was hooked the entire time.
An instant classic that I will be recommending to everyone I know.
Such a pleasant surprise; it's sweet without ever becoming sappy.
The scares are earned, the tension is real, and the ending is unforgettable.
A moving portrait of a family, told with great care.
Hands down the funniest film I've seen since college.
Its modest budget never shows, thanks to a terrific script and a committed cast.
I didn't expect a movie about chess to be this gripping.
The lead gives a career-best performance, and the rest of the cast matches her.
A joyful, big-hearted musical that deserves a huge audience.
I was smiling for the entire runtime.
Smart science fiction that respects both the science and the audience.
Not a single wasted scene in the whole thing.
The story is simple, but it is told so well that it feels brand new.
A thrilling ride with a surprisingly emotional core.
It's rare for a comedy to be this clever and this kind at the same time.
Haunting, gorgeous and unlike anything else I've seen this year.
I went for the special effects and stayed for the wonderful characters.
The cast is clearly having a blast, and that energy is contagious.
A gripping courtroom drama with a final scene I won't forget.
Even my teenager, who hates everything, admitted it was great.
This remake honors the original while adding plenty of fresh ideas.
Sharp, stylish and endlessly rewatchable.
The kind of movie that reminds you why you fell in love with cinema.
""")

MOVIE_FULL_NEGATIVE = _items("""
A tedious, joyless slog that feels twice as long as it is.
I walked out halfway through, and I never do that.
The plot makes no sense and the characters are impossible to care about.
Two hours of my life I will never get back.
A lazy cash grab that insults its own fans.
The jokes fall flat one after another.
I have rarely been this bored in a cinema.
Loud, messy and completely forgettable.
The twist is obvious from the first ten minutes.
Even the talented cast can't save this mess of a script.
Painfully slow, and the ending goes nowhere.
A sequel nobody asked for, and it shows.
The editing is so choppy that I often couldn't tell what was happening.
What a waste of a great premise.
I kept waiting for it to get better, and it never did.
The dialogue is so stiff that it sounds like a first table read.
Honestly one of the worst films I've seen this decade.
It tries to be edgy and ends up just being unpleasant.
My whole family was bored stiff, including the kids it was made for.
A beautiful trailer for a very dull movie.
The romance has zero chemistry, and the comedy has zero laughs.
This horror film is about as scary as a weather report.
Overlong, overstuffed and badly underwritten.
By the final act I was just counting the minutes until it ended.
The CGI looks unfinished and the story feels unfinished too.
A confusing mess that mistakes noise for excitement.
I wanted to like it, but it was dull from beginning to end.
Skip it; the book is a hundred times better.
The director seems more interested in style than in telling a coherent story.
Cheap sets, wooden acting and a script full of clichés.
The funniest thing about this comedy was the price of the popcorn.
A documentary so one-sided it feels like an advertisement.
The lead looks as bored as I felt.
Predictable from start to finish, with not one surprise along the way.
The big emotional scenes land with a thud.
It's hard to believe this script went through more than one draft.
A depressing, pointless film that left me in a foul mood all evening.
The musical numbers are forgettable and far too long.
Nothing happens for ninety minutes, and then it just stops.
Mean-spirited jokes and a plot held together with tape.
The action is so shaky and dark you can barely see who is fighting whom.
An embarrassing misfire from a director I used to admire.
Half the audience was on their phones by the midpoint, and I don't blame them.
I fell asleep twice and didn't miss anything.
Everything about it feels recycled from better movies.
A disappointing finale to a series I loved.
The movie keeps explaining its own jokes, which kills every one of them.
I can't think of a single person I'd recommend this to.
Pretentious, self-indulgent and almost impossible to sit through.
The animation is pretty, but the story is hollow and the humor is grating.
A thriller without a single thrill.
The trailer promised a clever heist movie; what we got was a muddled bore.
It's hard to care about a story when the movie itself doesn't seem to.
The lead actor mumbles through every line, and the plot is nonsense.
I have never seen so many talented people wasted in one film.
This remake strips out everything that made the original special.
The only horror here is how long it takes to get anywhere.
The script is so clumsy that the audience laughed at the serious moments.
A noisy, empty spectacle that left me with a headache.
By the end I was rooting for the credits.
""")

# Clauses about one aspect of a film; they start in lower case and have no final period.
MOVIE_ASPECT_POSITIVE = _items("""
the performances feel natural and lived-in
the score swells at exactly the right moments
the cinematography is breathtaking
the script is full of lines I'm still quoting
the pacing never lets up
the ending is both surprising and completely earned
the supporting cast steals every scene they're in
the visual effects are seamless
the villain is genuinely menacing
the dialogue crackles with wit
the costumes and sets are a feast for the eyes
the young lead is a real discovery
the humor lands almost every time
the fight choreography is inventive and easy to follow
the love story feels honest rather than forced
the world-building is rich and detailed
the sound design had me on the edge of my seat
the editing keeps the tension tight
the characters grow in ways that feel believable
the soundtrack is packed with perfect song choices
the final scene gave me chills
the mystery keeps you guessing until the very end
the director handles the shifts in tone beautifully
the animation is stunning
the script balances comedy and drama with real skill
the two leads have wonderful chemistry
the opening sequence is one of the best I've seen
the story is told with genuine warmth
the runtime flies by
the themes are handled with intelligence and care
the jokes still make me laugh days later
the quiet moments are just as powerful as the big ones
every twist feels clever rather than cheap
the city itself becomes a character, filmed with real love
the child actors are wonderfully natural
the last act ties everything together perfectly
""")

MOVIE_ASPECT_NEGATIVE = _items("""
the acting is wooden across the board
the score is loud and manipulative
the plot is full of holes
the dialogue is clumsy and full of clichés
the pacing drags terribly
the ending feels rushed and unearned
the villain is a cardboard cutout
the special effects look cheap
the jokes are stale
the characters make baffling decisions
the romance feels completely forced
the action scenes are an incoherent blur
the runtime is bloated by at least forty minutes
the lead seems to be sleepwalking through the role
the story borrows every beat from better films
the camera work is so shaky it made me dizzy
the script never decides what it wants to be
the twists are telegraphed well in advance
the humor is crude without being funny
the music drowns out half the dialogue
the supporting characters are barely sketched
the tone lurches from grim to silly without warning
the mystery is solved long before the characters figure it out
the world-building is thin and confusing
the emotional moments feel hollow
the middle hour is a slog
the final battle is dull and overlong
the lighting is so dark I could barely see anything
the flashbacks add nothing but confusion
the message is delivered with a sledgehammer
the accents are distractingly bad
the big reveal makes the rest of the story pointless
every character speaks in the same smug voice
the child actors seem to be reading from cue cards
the last act throws away everything that came before
the sequel setup at the end is shameless
""")

MOVIE_VERDICT_POSITIVE = _items("""
I walked out grinning.
Highly recommended.
I can't wait to watch it again.
Go see it on the biggest screen you can find.
It's easily one of my favorites this year.
Worth every penny of the ticket price.
A real treat.
I'd give it five stars without hesitation.
Don't miss this one.
I loved it.
What a wonderful surprise.
My friends and I talked about it all the way home.
This is filmmaking at its finest.
Absolutely worth your time.
I'm already recommending it to everyone.
A must-see.
Pure pleasure from start to finish.
It exceeded every expectation I had.
I'll be buying it the day it comes out on disc.
Bravo to everyone involved.
""")

MOVIE_VERDICT_NEGATIVE = _items("""
Save your money.
I checked my watch more than once.
Skip this one.
Wait for it to show up on free TV, or better yet, don't.
A real disappointment.
I can't recommend it.
What a waste of an evening.
I want my money back.
I regret buying a ticket.
Avoid at all costs.
Truly forgettable.
Not worth the hype.
One star, and that's being generous.
I was relieved when the credits rolled.
A total letdown.
My friends and I spent the drive home complaining about it.
Don't bother.
This one is best forgotten.
I expected so much more.
Utterly pointless.
""")

# Mild remarks of the opposite polarity, used in contrast ("X, but Y") reviews.
MOVIE_MILD_NEGATIVE = _items("""
the first act is a little slow
a couple of jokes miss the mark
the runtime is slightly too long
one subplot goes nowhere
the title is forgettable
the trailer gives away too much
a few scenes are a bit too dark
the villain gets too little screen time
some of the dialogue is cheesy
the opening credits drag on
the middle sags a little
the ending is a touch sentimental
""")

MOVIE_MILD_POSITIVE = _items("""
the poster looks great
the lead clearly tries her best
there are a couple of nice shots
the opening scene shows some promise
the soundtrack has one catchy song
the costumes are pretty
one supporting actor is fun to watch
the premise sounds interesting on paper
the first ten minutes are promising
the scenery is lovely
the dog in it is adorable
a few jokes land
""")


# ---------------------------------------------------------------------------------------------
# product_sentiment
# ---------------------------------------------------------------------------------------------

PRODUCT_FULL_POSITIVE = _items("""
Best toaster I've ever owned; it browns both sides evenly every time.
The suitcase rolls smoothly and survived three flights without a scratch.
My kids haven't put down these building blocks since Christmas.
This air fryer has completely changed how we cook dinner on weeknights.
The monitor's colors are vivid and setup took less than five minutes.
Super comfy slippers, and they've held up well after months of daily wear.
I was skeptical about buying a mattress online, but I'm sleeping better than I have in years.
The keyboard feels great to type on and the backlight is just bright enough.
This cookware set looks expensive and cooks beautifully.
Fantastic little tent; we set it up in ten minutes in the dark.
The winter boots kept my feet warm and dry through a whole week of snow.
This mystery novel had me guessing until the very last page.
The dollhouse is beautifully made, and my niece squealed when she opened it.
Great value: the tablet is fast enough for streaming, reading and video calls.
The pressure cooker makes tender stew in under an hour.
Lovely dress with a flattering cut, and the fabric doesn't wrinkle.
The webcam makes me look so much better in meetings.
These socks are the softest I've ever worn.
A sturdy, well-designed high chair that's easy to wipe down.
The coloring book kept my six-year-old busy on a long flight.
My old router kept dropping the signal, but this one covers the whole house.
The sheets are cool, soft and got even nicer after washing.
Fast, quiet printer that set up wirelessly on the first try.
This history book reads like a thriller.
The kitchen scale is accurate to the gram and easy to read.
I bought the remote-control car for my son and ended up playing with it myself.
Solid hiking poles that make steep descents much easier on my knees.
The sunglasses look stylish and the lenses are really clear.
Perfect gift for a new cook; my sister uses this cutting board daily.
The mouse fits my hand perfectly and the battery lasts for months.
This hoodie is thick, warm and washes well.
Our dog loves this chew toy and hasn't managed to destroy it yet.
The rice cooker makes fluffy rice every single time.
The e-reader's screen is easy on the eyes, even in bright sun.
Such a pretty lamp; it makes our living room feel cozy.
The stroller folds with one hand and fits easily in the trunk.
Excellent hair dryer: powerful, light and not too loud.
The building set had clear instructions and every single piece was there.
This children's atlas is packed with fun facts and lovely maps.
I'm impressed by how well this cheap umbrella handles strong wind.
The gaming headset is comfortable for hours and my friends say my voice is crystal clear.
Love these mixing bowls; the lids seal tight and they stack neatly.
The balance bike helped my son learn to ride in a week.
Gorgeous leather wallet that's already softening nicely with use.
The jigsaw puzzle was challenging in the best way and the picture is beautiful.
This portable charger has saved me on more than one long trip.
Beautiful scarf, very warm, and it got lots of compliments.
The microwave is simple to use and heats food evenly.
My husband says this is the most comfortable office chair he's ever had.
The science kit was a huge hit with my nine-year-old.
""")

PRODUCT_FULL_NEGATIVE = _items("""
The toaster burns one side of the bread and leaves the other side pale.
One wheel of the suitcase broke off on its very first trip.
The blocks don't fit together properly, so every tower falls over.
The air fryer's basket coating peeled after just a few uses.
The monitor arrived with a dead pixel right in the middle of the screen.
These slippers fell apart after only two weeks.
The mattress sagged in the middle within a month, and my back has been hurting ever since.
Several keys on this keyboard stick, and the letter E only works half the time.
The handles on these pots get dangerously hot.
The tent leaked all over our sleeping bags on the first night.
The boots are nowhere near as warm as advertised; my toes were numb after an hour.
This thriller was so slow that I gave up halfway through.
The dollhouse came with missing parts and instructions that made no sense.
The tablet is painfully slow and freezes while playing videos.
The lid of the pressure cooker doesn't seal, so steam escapes the whole time.
The dress looked nothing like the photo and the fabric feels cheap.
The webcam's picture is grainy even in a brightly lit room.
These socks got holes in the heels after a couple of washes.
The high chair wobbles, and I don't feel safe putting my baby in it.
Half the pages in the coloring book were stuck together.
The router drops the connection several times an hour.
The sheets felt scratchy and pilled after the first wash.
The printer jams almost every time I print more than two pages.
This history book is full of errors that even I could spot.
The kitchen scale gives a different reading every time I weigh the same thing.
The remote-control car stopped responding after ten minutes of play.
One of the hiking poles collapsed under my weight on the first hike.
The sunglasses scratched within days and the frame feels flimsy.
The cutting board cracked down the middle after being washed by hand.
The mouse's scroll wheel stopped working after a month.
The hoodie shrank and faded after one wash.
Our dog destroyed this so-called indestructible toy in under five minutes.
The rice cooker burns the bottom layer of rice every time.
The e-reader freezes constantly and takes forever to turn pages.
The lamp arrived broken, and the replacement was broken too.
The stroller is so heavy and awkward that I dread folding it.
The hair dryer overheats and shuts off before my hair is even half dry.
Three pieces were missing from the building set, and the instructions skipped a step.
The children's atlas has outdated maps and blurry pictures.
The umbrella flipped inside out and snapped in the first gust of wind.
The headset's microphone picks up every noise in the room except my voice.
The lids of these mixing bowls don't seal, and the bowls crack easily.
The pedals fell off the balance bike within a week.
The wallet's stitching came loose after a month.
The jigsaw pieces don't fit together and the picture is badly printed.
The portable charger couldn't even fully charge my phone once.
The scarf shed fibers all over my coat.
The microwave makes a loud buzzing noise and heats food unevenly.
This office chair started squeaking after a week and the armrest came loose.
The science kit was missing half the supplies needed for the experiments.
""")

# Sentences about one specific product (two per product and polarity).
PRODUCT_SPECIFIC_POSITIVE = _items("""
These earbuds sound amazing for the price and the battery easily lasts a full workday.
The earbuds stay put even when I'm running, and the noise cancelling works great on the train.
This blender crushes ice in seconds and is easy to clean.
The blender makes perfectly smooth smoothies, even with frozen fruit.
The rain jacket kept me completely dry during a two-hour downpour.
This jacket is light, packs into its own pocket, and actually keeps the rain out.
This novel kept me up reading until two in the morning.
The characters in this book feel so real that I miss them now that I've finished it.
My four-year-old has played with this wooden puzzle every day since it arrived.
The puzzle pieces are thick, smooth and sturdy enough to survive my toddler.
The phone case has already survived several drops onto concrete without a scratch on the phone.
This case is slim and grippy, and the buttons are still easy to press.
The laptop stand is rock solid and my neck pain is finally gone.
This stand folds flat, fits in my bag, and holds my laptop at a perfect height.
The grinder gives a consistent grind and my morning coffee tastes noticeably better.
This coffee grinder is quieter than I expected and very easy to adjust.
These running shoes are so comfortable that I ran my first half marathon in them without a blister.
The shoes have great cushioning and they fit true to size.
Every recipe I've tried from this cookbook has turned out delicious.
The cookbook's instructions are clear and the photos are beautiful.
This board game has become our family's favorite Friday night activity.
The game is easy to learn but has enough strategy to keep adults interested.
The desk lamp gives bright, even light and the dimmer works perfectly.
This lamp looks great on my desk and the adjustable arm stays exactly where I put it.
This backpack holds my laptop, lunch and gym clothes with room to spare.
The backpack's straps are well padded, so it stays comfortable even on long walks.
Eggs slide right off this pan without any oil.
The frying pan heats evenly and feels solid without being too heavy.
The smartwatch tracks my sleep and workouts accurately, and the battery lasts nearly a week.
This watch is so comfortable that I forget I'm wearing it.
The yoga mat has great grip, even during hot yoga classes.
This mat is thick enough to protect my knees and still rolls up easily.
The scooter is sturdy, the wheels light up, and my son rides it every day.
This scooter was easy to assemble and my daughter learned to ride it in one afternoon.
The speaker is small but surprisingly loud, with deep, clear bass.
This speaker survived a day at the beach, sand and splashes included.
The sweater is soft and warm, and it hasn't pilled at all after several washes.
This sweater fits beautifully and the color is even nicer in person.
The knives came razor sharp and still slice tomatoes effortlessly after months of use.
This knife set is well balanced and the block looks great on the counter.
The kettle boils water in about two minutes and switches off automatically.
This kettle is quiet, quick and looks lovely on the counter.
These jeans fit perfectly right out of the box and are very comfortable.
The jeans are stretchy enough to move in but still hold their shape all day.
This cable charges my phone quickly and still works after a year of being bent and yanked.
The braided cable feels sturdy and is long enough to reach my bed.
My daughter asks for this picture book every night, and the illustrations are gorgeous.
The picture book's rhymes are clever and fun to read aloud.
The water bottle keeps drinks ice cold all day, even in a hot car.
This bottle doesn't leak at all, even when it's upside down in my bag.
The vacuum picks up dog hair from the carpet in one pass.
This little vacuum is light, quiet and surprisingly powerful.
""")

PRODUCT_SPECIFIC_NEGATIVE = _items("""
The left earbud stopped charging after two weeks.
The earbuds keep disconnecting from my phone every few minutes.
The blender leaks from the base every time I use it.
The motor on this blender started smelling like burning plastic on the third use.
The "waterproof" jacket soaked through after ten minutes of light rain.
The zipper on this jacket broke the second time I wore it.
The plot of this novel is so predictable that I guessed the ending by chapter three.
The paperback arrived with pages printed upside down and several missing.
Half the puzzle pieces were cracked when we opened the box.
The paint on this wooden toy started peeling within a week.
The phone case cracked at the corner after one small drop.
This case is so slippery that my phone keeps sliding off the table.
The laptop stand wobbles every time I type.
One of the hinges on the stand snapped within the first month.
The grinder produces uneven grounds no matter which setting I choose.
The coffee grinder jammed after a week and never worked again.
The running shoes gave me blisters on the first short run.
The soles of these shoes started peeling off after a month.
Several recipes in this cookbook have wrong measurements, and my bread came out like a brick.
The cookbook calls for ingredients I can't find in any normal supermarket.
The board game's rules are confusing and badly translated.
The game pieces are flimsy cardboard that bent on the first play.
The lamp flickers constantly, even on the brightest setting.
The desk lamp's arm droops down no matter how tightly I adjust it.
The backpack's seams started tearing within two weeks of light use.
The straps on this backpack dig into my shoulders after just a few minutes.
The nonstick coating on this pan started flaking off after a month.
The frying pan warped the first time I used it on high heat.
The smartwatch loses its connection to my phone several times a day.
The watch's step counter is wildly inaccurate; it counted steps while I was sitting in the car.
The yoga mat has a strong chemical smell that still hasn't gone away.
The mat slides around on the floor during every session.
One wheel of the scooter fell off during the first ride.
The scooter's handlebar won't stay locked at the right height.
The speaker crackles and distorts at anything above half volume.
The bluetooth speaker won't hold a charge for more than an hour.
The sweater shrank two sizes after one gentle wash.
This sweater is so itchy that I can't wear it for more than an hour.
The knives in this set went dull within a few weeks.
Rust spots appeared on the knives after the first wash.
The kettle leaves a plastic taste in the water no matter how many times I rinse it.
The kettle's lid won't stay closed, so it never switches off on its own.
The dye from these jeans came off on my white sofa.
These jeans ripped at the seam the first time I sat down in them.
The charging cable stopped working after three days.
This cable charges so slowly that my phone barely gains any battery overnight.
The pages of the picture book are so thin that my toddler tore two of them on the first day.
The story in this picture book is so dull that my kids lost interest halfway through.
The bottle leaked all over my laptop the first day I used it.
The water bottle's lid is impossible to clean and started growing mold.
The vacuum loses suction after a few minutes of use.
The vacuum's battery barely lasts long enough to clean one room.
""")

# Neutral openers that fit any product.
PRODUCT_OPENERS = _items("""
Ordered during a holiday sale.
Ordered after reading a lot of reviews.
My first order from this brand.
My second purchase from this seller.
I don't usually write reviews, but here goes.
Quick review:
Arrived on Tuesday.
Ordered three weeks ago.
Honest opinion:
""")

PRODUCT_VERDICT_POSITIVE = _items("""
Would buy again.
Five stars.
Highly recommend.
Worth every cent.
Very happy with this purchase.
Love it.
Best purchase I've made this year.
Exactly what I was looking for.
No complaints at all.
Great value for the money.
It exceeded my expectations.
Couldn't be happier.
""")

PRODUCT_VERDICT_NEGATIVE = _items("""
Returned it after a week.
Would not buy again.
One star.
Save your money.
Very disappointed.
Total waste of money.
Sending it back.
Avoid.
I regret this purchase.
Not worth the price.
Look elsewhere.
I've asked for a refund.
""")

PRODUCT_EXTRA_POSITIVE = _items("""
Shipping was quick too.
It even arrived a day early.
The seller included a handwritten thank-you note.
Customer service was very helpful when I had a question.
The packaging was simple and recyclable.
""")

PRODUCT_EXTRA_NEGATIVE = _items("""
Customer service never answered my emails.
The seller refused to give me a refund.
The return process was a nightmare.
It also took three weeks to arrive.
The replacement they sent had the same problem.
""")

# Mild remarks of the opposite polarity, used in contrast ("X, but Y") reviews.
PRODUCT_MILD_NEGATIVE = _items("""
Shipping took a few extra days
The box arrived a little dented
It's a bit pricier than similar options
The packaging was excessive
Delivery was a day late
I had to wait two weeks for it to arrive
The seller was slow to answer my question
It cost a little more than I wanted to spend
""")

PRODUCT_MILD_POSITIVE = _items("""
Shipping was fast
It arrived well packaged
The price seemed fair
It looked great in the photos
Delivery was right on time
The seller was friendly
The box it came in was really nice
It arrived a day early
""")


# ---------------------------------------------------------------------------------------------
# everyday_nli: premise, then an entailed, a neutral and a contradicting hypothesis
# ---------------------------------------------------------------------------------------------

EVERYDAY_NLI = _records(
    """
A woman in a red coat is walking her dog through a snowy park.
A woman is outside with an animal.
The woman is walking to her sister's house.
The woman is sitting indoors by the fire.

Two kids are building a sandcastle near the water while their father reads a book.
Children are playing on a beach.
The father is reading a mystery novel.
The kids are asleep in the car.

A chef in a white apron is chopping onions in a busy restaurant kitchen.
Someone is preparing food.
The chef is making French onion soup.
The restaurant kitchen is completely empty.

An old man is feeding pigeons from a paper bag on a park bench.
A man is giving food to birds.
The man comes to the park every morning.
The man is chasing the pigeons away.

A group of teenagers is waiting at a bus stop in the rain, some holding umbrellas.
Some young people are outside in wet weather.
The teenagers are on their way to school.
The sun is shining on a dry afternoon.

A man in a suit is running to catch a train that is about to leave the platform.
A man is hurrying at a train station.
The man is late for a job interview.
The man is calmly sitting in his office.

A little girl is blowing out candles on a birthday cake while her family claps.
A child is celebrating with her family.
The girl is turning six years old.
The girl is crying alone in her room.

Three construction workers in orange vests are repairing a pothole on a city street.
Workers are fixing a road.
The workers are employed by the city.
The workers are taking a nap in a field.

A teenager is skateboarding down a ramp in an empty parking lot at dusk.
Someone is riding a skateboard in the evening.
The teenager is practicing for a competition.
The parking lot is packed with cars.

A woman is paying for groceries at a supermarket checkout with her toddler in the cart.
A woman is shopping with a young child.
The woman is buying food for a party.
The woman is shopping alone.

Two men are playing chess at a table in the square while a small crowd watches.
People are watching a game.
The two men are old friends.
The two men are playing basketball.

A nurse is taking an elderly patient's blood pressure in a hospital room.
A patient is receiving medical care.
The patient has been in the hospital for a week.
The nurse is at home watching television.

A young couple is painting the walls of an empty apartment light blue.
Two people are painting a room.
The couple just bought the apartment.
The couple is painting the walls bright orange.

A boy is flying a kite on a windy hill.
A child is outdoors with a kite.
The kite was a gift from his grandmother.
There is no wind at all on the hill.

A barista is pouring milk into a cup to make a heart shape on top of a latte.
Someone is making a coffee drink.
The latte was ordered by a regular customer.
The barista is pouring orange juice into a glass.

A family of four is having a picnic on a blanket under a large oak tree.
A family is eating outdoors.
The family is celebrating a birthday.
The family is eating dinner in a restaurant.

A man is shoveling snow from his driveway early in the morning.
There is snow on the ground.
The man is about to drive to work.
The man is mowing the lawn on a hot day.

A mail carrier is putting letters into a row of mailboxes outside an apartment building.
Mail is being delivered.
The mail carrier has worked the same route for years.
The mail carrier is collecting garbage bags.

Several people are doing yoga on mats in a sunny studio.
A group is exercising indoors.
The class is for beginners.
The people are running a marathon through the city.

A woman is sitting on a train, reading a newspaper and drinking coffee from a paper cup.
A woman is reading while traveling.
The woman is going to work.
The woman is asleep on a plane.

A firefighter is carrying a ladder toward a burning building.
There is a fire.
The firefighter is trying to rescue a cat.
The firefighter is relaxing at the station.

Two toddlers are splashing in a small inflatable pool in a backyard.
Young children are playing in water.
It is a hot summer day.
The toddlers are building a snowman.

A man is fixing a flat tire on his bicycle at the side of a country road.
A bicycle is being repaired.
The man rides to work every day.
The man is riding his bicycle at full speed.

A waiter is carrying three plates of pasta to a table by the window.
Food is being served.
The customers ordered a long time ago.
The waiter is carrying empty plates back to the kitchen.

A girl is practicing the violin in her bedroom while her cat sleeps on the bed.
A girl is playing a musical instrument.
The girl has a concert next week.
The girl is playing the piano in a concert hall.

A crowd of fans in matching jerseys is cheering in a stadium.
People in a stadium are cheering.
Their team is winning the match.
The stadium is completely silent and empty.

An elderly woman is knitting a scarf in a rocking chair on her porch.
A woman is making something with yarn.
The scarf is for her grandson.
The woman is jogging along the beach.

A man is washing dishes at the sink while a radio plays on the counter.
Someone is cleaning dishes.
The man just finished cooking dinner for his family.
The kitchen is completely silent.

A student is asleep at a library desk with her head on an open textbook.
A student is sleeping.
The student was up all night studying.
The student is reading the textbook carefully.

Two women are laughing as they carry shopping bags out of a mall.
Two people are leaving a shopping center.
The women are sisters.
The women are arguing angrily inside a bank.

A dog is chasing a tennis ball across a freshly mowed lawn.
An animal is running on grass.
The dog's owner threw the ball.
The dog is asleep on the couch.

A man in a yellow raincoat is fishing from a small boat on a misty lake.
A man is on the water.
The man has not caught any fish yet.
The man is fishing from a pier on a clear, sunny day.

A mechanic is lying under a car in a garage, holding a wrench.
Someone is working on a car.
The car's brakes need to be replaced.
The mechanic is driving the car on the highway.

A bride and groom are dancing while guests take photos with their phones.
A couple is dancing at a wedding.
The wedding is taking place in a hotel.
Nobody is watching the couple.

A boy is crying because his ice cream fell onto the sidewalk.
A child is upset.
The boy's mother will buy him another ice cream.
The boy is happily eating his ice cream.

A woman is jogging along the beach at sunrise with headphones on.
A woman is exercising near the ocean.
The woman is training for a race.
The woman is jogging on a treadmill at the gym.

A farmer is driving a tractor across a muddy field.
A vehicle is moving through a field.
The farmer is planting corn.
The field is dry and dusty.

A group of friends is singing karaoke in a small, crowded bar.
A group of people is singing.
It is someone's birthday.
The friends are studying quietly in a library.

A man is asleep in a hammock between two palm trees.
A man is resting outdoors.
The man is on vacation.
The man is climbing one of the palm trees.

A teacher is writing math problems on a whiteboard while students copy them into notebooks.
Some students are writing.
The students have a test tomorrow.
The classroom is empty.

A toddler is stacking colorful blocks on the living room floor.
A small child is playing with toys.
The blocks were a birthday present.
The toddler is taking a bath.

Two cyclists in helmets are riding side by side up a steep mountain road.
People are riding bikes uphill.
The cyclists are racing each other.
The cyclists are coasting downhill.

A woman is hanging laundry on a clothesline in her garden.
Clothes are being hung up to dry.
The woman did the laundry this morning.
The woman is putting clothes into a dryer in the basement.

A street musician is playing guitar while people drop coins into his open case.
Someone is performing music in public.
The musician plays on the same corner every weekend.
Nobody is giving the musician any money.

An airport worker is waving two orange sticks to guide a plane to the gate.
A plane is being directed.
The plane just arrived from another country.
The worker is loading bags onto a bus.

A man is carrying a large box up a flight of stairs.
A man is climbing stairs.
The man is moving into a new apartment.
The man's hands are empty.

Two girls are jumping rope on the sidewalk while a third girl counts out loud.
Children are playing outside.
The girls live on the same street.
The girls are sitting quietly in a classroom.

A woman is trying on sunglasses in front of a mirror in a shop.
A woman is looking at her reflection.
The woman is going on a beach vacation.
The woman is swimming in a lake.

A baker is pulling loaves of bread out of a hot oven.
Bread has been baked.
The bread will be sold at a market.
The oven is turned off and cold.

A man and his son are fishing off the end of a wooden pier.
Two people are fishing.
They have caught three fish so far.
The man and his son are playing soccer in a park.

A crowd is gathered around a street performer who is juggling flaming torches.
A performer is juggling.
The performer has practiced for years.
No one is watching the performer.

A young man is typing on a laptop in a crowded coffee shop.
A man is using a computer.
The man is writing a novel.
The young man is alone in a quiet office.

An old woman is tending tomato plants in a small vegetable garden.
A woman is gardening.
She grows vegetables to give to her neighbors.
The woman is shopping for tomatoes at a supermarket.

A boy in a swimsuit is diving off a high board into an outdoor pool.
A boy is jumping into water.
The boy is on a swim team.
The boy is afraid to go near the water.

A man is pushing a stroller with twins through a crowded market.
A man is with two babies at a market.
The man is buying fruit.
The market is completely deserted.

Four friends are playing a card game around a kitchen table late at night.
A group of people is playing cards.
They are playing poker for money.
The friends are playing cards in a park in the afternoon.

A security guard is checking bags at the entrance of a concert venue.
Bags are being inspected.
The concert is sold out.
The guard is letting everyone in without looking at anything.

A girl in a raincoat is jumping into puddles on her way home from school.
A girl is outside in a raincoat.
The girl's boots are new.
The ground is completely dry.

A man is repairing a leaky faucet in a bathroom with his tools spread on the floor.
Someone is fixing plumbing.
The man is a professional plumber.
The man is taking a shower.

A group of tourists is taking photos in front of a large fountain.
People are taking pictures.
The tourists are from Japan.
The tourists are sleeping on a bus.

A woman is carrying a sleeping baby on her back while she sweeps the floor.
A woman is cleaning.
The baby is her daughter.
The baby is crying loudly.

A teenager is mowing the lawn in front of a small white house.
Grass is being cut.
The teenager is earning money for a new phone.
The teenager is shoveling snow.

Two dogs are pulling on opposite ends of a rope toy.
Two animals are playing with a toy.
The dogs belong to the same family.
The dogs are sleeping next to each other.

A man is standing on a ladder, hanging holiday lights along the roof of his house.
A man is decorating his house.
The man's children asked him to put up the lights.
The man is lying on the couch.

A woman is pouring tea for her guests in a bright living room.
Someone is serving a drink.
The guests are her coworkers.
The woman is alone in the house.

A kid is licking a melting popsicle on a hot sidewalk.
A child is eating a frozen treat.
The popsicle is cherry flavored.
The kid is drinking hot soup.

A man is giving a presentation to a room full of people in suits.
A man is speaking to an audience.
The presentation is about quarterly sales.
The room is empty except for the man.

Several runners are crossing the finish line of a marathon as volunteers hand out water.
Runners are finishing a race.
It is the first marathon for some of the runners.
The race has not started yet.

A woman is reading a bedtime story to two children tucked into bunk beds.
Children are in bed.
The woman is the children's aunt.
The children are playing outside in the yard.

A man is trimming a hedge with electric shears in front of a brick house.
A man is doing yard work.
The man is a professional gardener.
The man is sitting inside watching a movie.

A little boy is holding his father's hand as they cross a busy street.
A child and an adult are crossing a road.
They are walking to the park.
The boy is crossing the street alone.

A woman is scraping ice off her car's windshield on a cold morning.
It is cold outside.
The woman is late for work.
The woman is washing her car in the summer heat.

Two teenagers are sharing a pizza at a table outside a small restaurant.
Two people are eating pizza.
The teenagers are on a first date.
The teenagers are eating sushi inside.

A doctor is looking at an X-ray on a screen while talking to a patient.
A doctor is examining an image.
The patient has a broken arm.
The doctor is performing surgery in an operating room.

A man is walking three dogs on leashes along a river path.
A person is walking dogs outside.
The man is a professional dog walker.
The dogs are running free without leashes.

A girl is feeding a carrot to a horse over a wooden fence.
A horse is being fed.
The horse belongs to the girl's family.
The girl is riding the horse in a race.

Passengers are sitting in rows on a plane as a flight attendant demonstrates the seat belt.
A flight attendant is giving a demonstration.
The plane is flying to London.
The passengers are standing in line at a bus station.

A man is sanding a wooden chair in his garage.
A man is working with wood.
The chair is an antique he bought at a flea market.
The man is painting a metal fence outdoors.

A couple is walking hand in hand along a beach at sunset.
Two people are holding hands.
The couple is celebrating their anniversary.
The couple is walking along the beach at noon.

A child is sitting in a dentist's chair with her mouth open.
A child is at the dentist.
The child has a cavity.
The child is eating candy at home.

A cashier is counting change for a customer at a gas station.
A cashier is handling money.
The customer bought snacks and gas.
The gas station is closed and dark.

Two elderly men are playing checkers on a wooden board on a front porch.
Two men are playing a board game.
The men have been neighbors for decades.
The two men are playing tennis.

A woman is photographing a mountain lake with a large camera on a tripod.
A woman is taking a picture outdoors.
The woman is a professional photographer.
The woman is using her phone to take a selfie in her kitchen.

A boy is reading a comic book under a blanket with a flashlight.
A boy is reading.
The boy is supposed to be asleep.
The boy is reading in bright sunlight at the beach.

A man is stacking chairs onto tables in an empty café after closing time.
A man is moving furniture.
The man owns the café.
The café is full of customers.

A team of rowers is pulling their oars in unison on a calm river.
People are rowing a boat.
The rowers are training for a race.
The river is rough and stormy.

A woman is wrapping a present in shiny paper at the kitchen table.
A gift is being wrapped.
The present is for her husband.
The woman is opening a present she just received.

A young man is helping an elderly woman carry her groceries to her car.
Someone is carrying groceries.
The young man works at the grocery store.
The elderly woman is carrying all of the bags herself.
""",
    4,
)


# ---------------------------------------------------------------------------------------------
# fact_nli: passage, then an entailed claim and a claim that is not entailed
# ---------------------------------------------------------------------------------------------

FACT_NLI = _records(
    """
The Nile flows north through eastern Africa and empties into the Mediterranean Sea.
The Nile ends in the Mediterranean Sea.
The Nile flows south into the Indian Ocean.

Canberra, not Sydney, is the capital city of Australia.
Sydney is not the capital of Australia.
Sydney is the capital of Australia.

Mount Everest, on the border between Nepal and China, is the highest mountain above sea level on
    Earth.
No mountain on Earth rises higher above sea level than Everest.
Mount Everest lies entirely within India.

Iceland sits on the Mid-Atlantic Ridge, which is why the island has many volcanoes and hot springs.
There are volcanoes in Iceland.
Iceland has no volcanic activity at all.

The Sahara is the largest hot desert in the world and covers much of North Africa.
Much of North Africa is covered by the Sahara.
The Sahara is located in South America.

Lake Baikal in Siberia is the deepest lake in the world.
Lake Baikal is in Siberia.
Lake Baikal is a shallow lake.

Portugal's capital, Lisbon, lies at the mouth of the Tagus River on the Atlantic coast.
Lisbon is on the coast.
Lisbon is a landlocked city far from the sea.

The Amazon rainforest spans several countries, but the largest part of it lies in Brazil.
Brazil contains more of the Amazon rainforest than any other country.
The Amazon rainforest lies entirely within Peru.

Japan is made up of four main islands and thousands of smaller ones.
Japan consists of many islands.
Japan is a single island.

The town of Eldermoor, built on a hill above a narrow valley, was flooded only once, in 1952,
    when a dam upstream failed.
A dam failure caused a flood in Eldermoor.
The dam upstream of Eldermoor was rebuilt in 1960.

Venice is built on more than a hundred small islands in a lagoon, and canals serve as many of
    its streets.
There are canals in Venice.
Venice is built on one large island with no canals.

The Dead Sea is so salty that swimmers float easily on its surface.
Swimmers float easily in the Dead Sea.
The Dead Sea is a freshwater lake.

Greenland is the world's largest island, and most of its surface is covered by an ice sheet.
Ice covers most of Greenland.
Greenland is mostly covered by tropical forest.

Chile stretches along the western edge of South America and is far longer than it is wide.
Chile is long and narrow.
Chile lies on the eastern coast of South America.

The river town of Halden Ford has two bridges; the older stone bridge is now open only to
    pedestrians.
Cars cannot use the older bridge in Halden Ford.
Halden Ford has only one bridge.

Water boils at 100 degrees Celsius at sea level, but at lower temperatures high in the
    mountains, where air pressure is lower.
Air pressure affects the boiling point of water.
Water boils at a higher temperature on mountaintops.

Plants use sunlight, water and carbon dioxide to make sugar, releasing oxygen as a by-product.
Oxygen is released by plants.
Plants need no sunlight to make sugar.

Sound travels faster through water than through air.
Sound moves more slowly in air than in water.
Sound cannot travel through water.

The heart of an adult human at rest usually beats between 60 and 100 times per minute.
A resting adult heart usually beats at least 60 times a minute.
A resting adult heart usually beats about 200 times a minute.

Copper is a good conductor of electricity, which is why it is widely used in electrical wiring.
Copper conducts electricity well.
Copper is rarely used in electrical wiring.

Mars has two small moons, named Phobos and Deimos.
Phobos is a moon of Mars.
Mars has no moons.

Diamonds and graphite are both made entirely of carbon, but their atoms are arranged differently.
Graphite is made of carbon.
Diamonds contain no carbon.

Honeybees tell other bees where flowers are through a movement known as the waggle dance.
Bees use movement to share information about flowers.
Honeybees have no way of telling each other where flowers are.

Light from the Sun takes about eight minutes to reach Earth.
Sunlight reaches Earth in less than ten minutes.
Sunlight takes about an hour to reach Earth.

Vaccines train the immune system to recognize a germ without causing the disease itself.
Vaccines help the immune system recognize germs.
Vaccines work by giving people the full disease.

In Dr. Okafor's lab, the new battery kept 90 percent of its capacity after 1,000 charging cycles.
The battery lost only a small part of its capacity after 1,000 cycles.
The new battery will go on sale next year.

Whales are mammals, so they breathe air and must come to the surface regularly.
Whales need to surface to breathe.
Whales breathe underwater through gills.

Ice floats on water because it is less dense than liquid water.
Liquid water is denser than ice.
Ice sinks to the bottom of lakes.

Jupiter is the largest planet in the solar system and is made mostly of hydrogen and helium.
No planet in the solar system is bigger than Jupiter.
Jupiter is a small rocky planet.

In the school experiment, seedlings grown under blue light grew taller than those grown under
    red light.
Blue light produced taller seedlings than red light.
The seedlings under red light grew taller.

The Berlin Wall fell in November 1989, and Germany was formally reunified less than a year later.
Germany was reunified within a year of the wall falling.
The Berlin Wall fell in 1975.

The printing press that Johannes Gutenberg built around 1440 made books much cheaper to produce
    in Europe.
Gutenberg's press lowered the cost of making books.
The printing press made books more expensive in Europe.

The ancient city of Pompeii was buried under volcanic ash when Mount Vesuvius erupted in 79 AD.
Pompeii was destroyed by a volcanic eruption.
Pompeii was destroyed by a flood.

In 1969, Neil Armstrong became the first person to walk on the Moon.
A person walked on the Moon in 1969.
Nobody walked on the Moon before 1980.

The Great Wall of China was built and rebuilt over many centuries by different dynasties.
More than one dynasty worked on the Great Wall.
The Great Wall was built in a single year.

The Titanic sank in April 1912 after striking an iceberg on its first voyage.
The Titanic hit an iceberg.
The Titanic completed many voyages before it sank.

The Roman Empire split into eastern and western halves, and the eastern half survived for about
    a thousand years after the western half collapsed.
The eastern part of the Roman Empire outlived the western part.
Both halves of the Roman Empire fell in the same year.

Marie Curie won Nobel Prizes in both physics and chemistry.
Marie Curie received more than one Nobel Prize.
Marie Curie never won a Nobel Prize.

The old mill in Carver's Bend was turned into a public library in 1987, after standing empty for
    twenty years.
The mill was empty before it became a library.
The library in Carver's Bend is open every day of the week.

The first modern Olympic Games were held in Athens in 1896.
Athens hosted the 1896 Olympics.
The first modern Olympics took place in Paris.

The Wright brothers made the first powered, controlled airplane flights in December 1903 near
    Kitty Hawk, North Carolina.
The Wright brothers flew a powered airplane in 1903.
The Wright brothers' first flight took place in France.

Magna Carta, sealed by King John of England in 1215, limited some of the king's powers.
Magna Carta placed limits on the king.
Magna Carta gave King John unlimited power.

The Panama Canal opened in 1914, letting ships travel between the Atlantic and the Pacific
    without sailing around South America.
The Panama Canal shortened voyages between the Atlantic and the Pacific.
The Panama Canal connects the Atlantic to the Indian Ocean.

Ancient Egyptians built the pyramids at Giza as tombs for their kings.
The Giza pyramids were built as tombs.
The pyramids at Giza were built as grain stores.

In 1928, Alexander Fleming noticed that a mold was killing the bacteria in one of his dishes, a
    discovery that led to penicillin.
Fleming's observation of a mold led to penicillin.
Fleming discovered penicillin in 1978.

After eight years as a bank teller, Priya left her job to open a small bakery with her brother.
Priya used to work at a bank.
Priya's bakery is the most popular one in town.

The company announced that all employees will be able to work from home two days a week starting
    in March.
Employees will be allowed some remote work from March.
The company has banned working from home.

Marcus was promoted to regional manager last spring, and he now oversees six stores.
Marcus is responsible for more than one store.
Marcus will soon be promoted again.

The factory hired forty new workers this year to keep up with orders for its electric bikes.
The factory increased its workforce.
The factory laid off forty workers this year.

Because of a software failure, the airline cancelled dozens of flights on Friday morning.
Flights were cancelled on Friday.
The airline cancelled the flights because of a snowstorm.

Lena, a nurse for twenty years, now trains new nurses at the city hospital.
Lena has experience as a nurse.
Lena has never worked in a hospital.

The bookstore on Main Street will close in June after its owner decided to retire.
The owner of the bookstore is retiring.
The bookstore's owner plans to move abroad.

Workers at the port voted to accept a new contract that raises wages by six percent over three
    years.
The port workers' wages will increase.
The port workers rejected the new contract.

Daniel works night shifts at a warehouse and takes accounting classes during the day.
Daniel is studying accounting.
Daniel works only during the day.

The startup, founded in a garage in 2016, now employs more than three hundred people.
The startup has grown since it was founded.
The startup's founders are brothers.

Sofia turned down a job offer in London because she did not want to move away from her parents.
Sofia chose not to accept a job in London.
Sofia moved to London for a new job.

The restaurant's head chef trained in Lyon before returning home to run her family's kitchen.
The head chef received training in Lyon.
The chef's family restaurant serves only French food.

The city council approved a plan to hire twenty more bus drivers to reduce waiting times.
The council wants shorter waits for buses.
The council voted to reduce the number of bus drivers.

Ahmed spent three years as an intern and junior designer before the agency made him its art
    director.
Ahmed became the agency's art director.
Ahmed joined the agency as its art director on his first day.

The supermarket chain said it would stop selling plastic shopping bags in all of its stores by
    the end of the year.
The chain plans to stop offering plastic bags.
The supermarket chain will start selling more plastic bags.

Most of the hotel's staff are students who work there during the summer holidays.
Many of the hotel's workers are students.
The hotel is located by the sea.

The bakery opens at six in the morning and usually sells out of croissants before nine.
The croissants are often gone before nine o'clock.
The bakery's croissants are the best in the city.

Rachel left her job as a lawyer to become a high school history teacher.
Rachel now teaches history.
Rachel has always worked as a teacher.

The delivery company replaced half of its vans with electric models last year.
Some of the company's vans are electric.
None of the company's vans are electric.

Tomás has worked at the same car factory for thirty-one years and plans to retire next summer.
Tomás has worked at the factory for over three decades.
Tomás started working at the factory last year.

A marathon is just over 42 kilometers long.
A marathon is longer than 40 kilometers.
A marathon is 10 kilometers long.

In tennis, a player normally needs to win at least six games, with a margin of two, to take a
    set unless a tiebreak is played.
Winning a set normally takes at least six games.
A tennis set is won by the first player to win three games.

The home team scored twice in the final five minutes to win the match 3-2.
The home team won by one goal.
The match ended in a draw.

Basketball was invented by James Naismith in 1891 as an indoor game for the winter months.
Basketball was designed to be played indoors.
Basketball was invented in the 1950s.

The cyclist crashed on the second stage and had to withdraw from the race with a broken collarbone.
The cyclist did not finish the race.
The cyclist had won the first stage.

A soccer team has eleven players on the field, including the goalkeeper.
A goalkeeper is one of the eleven players on the field.
Soccer teams play with fifteen players on the field.

The Tour de France is held mostly in July and lasts about three weeks.
The Tour de France takes place over several weeks.
The Tour de France is a one-day race.

After missing two seasons with a knee injury, the striker scored in her first match back.
The striker scored after returning from injury.
The striker's team won that match.

The swimmer broke the national record in the 200-meter butterfly but finished fourth in the final.
The swimmer set a national record.
The swimmer won the gold medal in the final.

Test matches in cricket can last up to five days.
A Test cricket match can go on for several days.
Test cricket matches always end within three hours.

The Riverside Rangers have won the league title three years in a row.
The Rangers have won the title more than once.
The Rangers have never won the league.

Our local club finished the season unbeaten at home but lost six games on the road.
The club did not lose any home games.
The club lost most of its home games.

Golf courses usually have eighteen holes, and the player who finishes with the fewest strokes wins.
In golf, a lower number of strokes is better.
In golf, the player with the most strokes wins.

The ice hockey match was postponed because the arena's cooling system broke down.
A problem at the arena caused the postponement.
The match was postponed because of a snowstorm.

The young sprinter ran 100 meters in 10.4 seconds, a new school record.
The sprinter set a school record.
The sprinter took 14 seconds to run 100 meters.

The volcano on the island has been quiet for over two centuries, but scientists still monitor it
    closely.
Scientists keep watching the volcano.
The volcano erupted last year.

Penguins live almost entirely in the Southern Hemisphere, with most species found around Antarctica.
Most penguin species live around Antarctica.
Penguins are found mostly near the North Pole.

The train from Milton to Ashby takes about forty minutes and runs every half hour on weekdays.
On weekdays, a train leaves roughly twice an hour.
The journey from Milton to Ashby takes three hours.

Earthworms help farmers by loosening the soil and mixing in dead leaves.
Earthworms can benefit soil.
Earthworms make soil harder and less fertile.

The museum's new wing, which opened last week, is devoted entirely to modern photography.
The museum recently opened a new section.
The new wing was paid for by a private donor.

The Pacific is the largest and deepest of Earth's oceans.
The Pacific Ocean is larger than the Atlantic.
The Atlantic is the largest ocean on Earth.

A leap year has 366 days, with the extra day added at the end of February.
February has an extra day in a leap year.
A leap year has 364 days.

Tea originated in China and was brought to Europe by traders in the seventeenth century.
Tea came to Europe from China.
Tea was first grown in England.

The bridge was closed for repairs for six months and reopened to traffic in October.
The bridge is open to traffic again.
The repairs to the bridge cost more than expected.

Octopuses have three hearts and blue blood.
An octopus has more than one heart.
Octopuses have red blood like humans.

The town library lends out tools such as drills and ladders in addition to books.
The library lends more than just books.
The library lends only books.

Because of the drought, the reservoir is at its lowest level in forty years.
The reservoir's water level is very low.
The reservoir is overflowing after heavy rain.

The spacecraft took seven months to reach Mars and landed safely in a large crater.
The spacecraft landed on Mars.
The spacecraft crashed on the way to Mars.

The school's chess team, made up of five students, won the regional tournament for the first time.
The chess team won a regional competition.
The chess team will compete at the national level next.

Bats are the only mammals capable of true flight.
Bats are able to fly.
Some mammals other than bats can truly fly.

The hospital opened a new children's ward with forty beds and a playroom.
The new ward is for children.
The new children's ward was paid for by a charity.

The farm grows apples and pears, and in autumn visitors can pick their own fruit.
Visitors can pick fruit at the farm in autumn.
The farm grows only wheat.

Spiders are not insects; they have eight legs, while insects have six.
Spiders have more legs than insects.
Spiders are a type of insect with six legs.

The marathon was moved to an earlier start time because temperatures were expected to reach 35
    degrees.
Organizers expected hot weather.
The race start was delayed because of snow.

Gold does not rust or tarnish easily, which is one reason it has been used for jewelry for
    thousands of years.
Gold is resistant to tarnishing.
Gold rusts quickly when exposed to air.

Saturn's rings are made mostly of ice, along with smaller amounts of rock and dust.
Ice is the main ingredient of Saturn's rings.
Saturn's rings are made mostly of gas.

The novelist wrote her first book while working as a night-shift nurse.
The novelist once worked as a nurse.
The novelist's first book became a bestseller.

The ferry crossing was cancelled twice this week because of strong winds.
Bad weather disrupted the ferry.
The ferry company plans to buy a larger boat.

Most of the island's electricity now comes from wind turbines and solar panels.
Renewable sources produce most of the island's power.
The island gets most of its electricity from coal.

The coach benched the team captain for the first half after he missed two practices.
The captain did not play in the first half.
The captain scored in the second half.

The city's population doubled between 1990 and 2020, mostly because of new jobs in the tech sector.
The city had more people in 2020 than in 1990.
The city's population fell between 1990 and 2020.

Koalas feed almost exclusively on eucalyptus leaves.
Eucalyptus leaves make up nearly all of a koala's diet.
Koalas mainly eat insects.

The concert hall was designed by an architect who had also trained as a violinist.
The architect had musical training.
The architect plays in the concert hall's orchestra.

Mercury is the closest planet to the Sun.
No planet orbits closer to the Sun than Mercury.
Venus is the planet closest to the Sun.

The rowing team trains on the river at five in the morning, before the boat traffic begins.
The team trains early in the morning.
The rowing team trains only in the evening.

The old lighthouse no longer guides ships; it was converted into a small museum in 2005.
The lighthouse now serves as a museum.
The lighthouse museum charges an entry fee.

Rice is the main food for more than half of the world's population.
Billions of people rely on rice as a staple food.
Rice is eaten by only a small fraction of the world's people.

The café only accepts card payments and no longer takes cash.
You cannot pay with cash at the café.
The café accepts only cash.

Hurricanes form over warm ocean water and weaken once they move over land.
Hurricanes lose strength over land.
Hurricanes grow stronger as they move inland.

Our team lost the first game of the series but came back to win the next three.
The team won three games in the series.
The team lost every game of the series.

The Amazon River carries more water than any other river in the world.
No river carries more water than the Amazon.
The Amazon carries less water than most rivers.

The museum is free on Sundays, while tickets cost twelve dollars on other days.
Visiting the museum on a Sunday costs nothing.
The museum charges twelve dollars every day of the week.

The first Harry Potter book was published in 1997.
The first Harry Potter book came out in the 1990s.
The first Harry Potter book was published in 2010.

The research team spent two winters in Antarctica studying how seals find food under the ice.
The team studied seals.
The team was made up of marine biologists from Norway.

The company's profits fell by ten percent last quarter, even though sales rose slightly.
The company's sales went up last quarter.
The company's profits rose last quarter.

Ostriches cannot fly, but they can run faster than any other bird.
Ostriches are fast runners.
Ostriches are strong fliers.

The new stadium holds 60,000 spectators, twice as many as the old one.
The old stadium held about 30,000 spectators.
The new stadium is smaller than the old one.

The village school has only two classrooms and about thirty pupils.
The village school is small.
The village school will close next year.

Most of the world's cocoa is grown in West Africa, especially in Ivory Coast and Ghana.
Ghana is a cocoa-growing country.
Cocoa is grown mainly in Northern Europe.

The goalkeeper saved two penalties in the shootout, sending her team into the final.
Her team reached the final.
The goalkeeper was named player of the tournament.

Antarctica is the coldest, windiest and driest continent.
Antarctica is colder than the other continents.
Antarctica is the warmest continent.

The mayor, a former firefighter, was re-elected for a second term in November.
The mayor used to be a firefighter.
The mayor plans to run for a third term.

Mosquitoes are attracted to the carbon dioxide that people breathe out.
The carbon dioxide people exhale draws mosquitoes.
Carbon dioxide drives mosquitoes away.

The city built a new cycle lane along the river, and bike traffic there has tripled.
More people cycle along the river since the lane was built.
Fewer people now cycle along the river.

The chess champion, who learned the game at age four, became a grandmaster at sixteen.
The champion became a grandmaster as a teenager.
The champion learned chess as an adult.
""",
    3,
)


# ---------------------------------------------------------------------------------------------
# paraphrase_pairs: two sentences per record
# ---------------------------------------------------------------------------------------------

PARAPHRASE_EQUIVALENT = _records(
    """
The meeting has been moved from Tuesday to Thursday.
They rescheduled the meeting for Thursday instead of Tuesday.

She finished the marathon in just under four hours.
It took her a little less than four hours to complete the marathon.

The store will be closed on Monday for inventory.
Because of stock-taking, the shop won't open on Monday.

Most of the passengers were asleep when the plane landed.
By the time the plane touched down, nearly all the passengers had fallen asleep.

The company hired twelve new engineers last month.
Last month, twelve engineers joined the company.

I can't make it to dinner tonight because I have to work late.
I have to stay late at work, so I'll miss dinner tonight.

The bridge was closed after inspectors found cracks in its supports.
Inspectors discovered cracks in the supports, so the bridge was shut.

He rarely drinks coffee after noon.
He almost never has coffee in the afternoon.

The museum is free for children under twelve.
Kids younger than twelve can visit the museum at no cost.

Prices rose sharply after the storm damaged the harvest.
The storm ruined part of the harvest, and prices went up steeply as a result.

The library extended its weekend opening hours.
On weekends, the library now stays open longer.

Our flight was delayed by two hours because of fog.
Fog held up our flight for two hours.

The new policy applies only to full-time staff.
Only employees who work full time are covered by the new policy.

The recipe calls for two cups of flour and one egg.
You need one egg and two cups of flour for this recipe.

The team won the championship for the first time in its history.
It was the first championship title the team had ever won.

The concert was cancelled due to heavy rain.
Heavy rain forced the organizers to call off the concert.

She has lived in Madrid since 2015.
She moved to Madrid in 2015 and has been there ever since.

The senator declined to comment on the report.
The senator would not say anything about the report.

Tickets sold out within an hour of going on sale.
All the tickets were gone less than an hour after sales opened.

The doctor told him to get more rest.
He was advised by his doctor to rest more.

The city plans to plant ten thousand trees over the next five years.
Over the coming five years, the city intends to plant 10,000 trees.

The printer on the second floor is out of paper again.
Once again, there's no paper left in the second-floor printer.

The package should arrive by Friday at the latest.
You can expect the package no later than Friday.

Sales of electric cars doubled compared with last year.
Twice as many electric cars were sold as the year before.

The professor postponed the exam until next week.
The exam has been pushed back to next week by the professor.

He apologized for forgetting her birthday.
He said he was sorry that he had forgotten her birthday.

The restaurant only accepts reservations for groups of six or more.
You can book a table at the restaurant only if your party has at least six people.

Heavy snow closed most roads in the region overnight.
Overnight, most of the region's roads were shut by heavy snowfall.

The film is based on a true story.
The movie was inspired by real events.

Nobody was hurt in the fire.
The fire caused no injuries.

The factory will cut its energy use by a third.
Energy consumption at the factory is set to drop by one third.

Please turn off the lights when you leave the room.
Remember to switch the lights off as you exit the room.

The children were excited to see snow for the first time.
Seeing snow for the first time thrilled the kids.

The author's latest novel has been translated into twenty languages.
Translations of the author's newest novel exist in twenty languages.

Our neighbors are selling their house and moving to the coast.
The people next door have put their house up for sale because they're relocating to the coast.

The price includes breakfast and free parking.
Breakfast and parking are included in the price at no extra charge.

The bus was so crowded that I had to stand the whole way.
There were so many people on the bus that I couldn't find a seat for the entire trip.

The software update fixes several security problems.
Several security flaws are patched in the software update.

He was born in a small village near the border.
His birthplace is a small village close to the border.

The vote was postponed until all members could attend.
They delayed the vote so that every member could be present.

I've never seen such a beautiful sunset.
That was the most beautiful sunset I've ever seen.

Most experts expect interest rates to stay the same.
The majority of experts predict that interest rates will not change.

She quit her job to travel around South America.
She left her job so she could travel through South America.

The river burst its banks after three days of rain.
Three days of rain caused the river to overflow.

The café offers a ten percent discount to students.
Students get ten percent off at the café.

The suspect was arrested at the airport on Sunday.
Police detained the suspect at the airport on Sunday.

The game was tied at the end of regular time.
When regular time ran out, the score was level.

This jacket is too small for me.
I'm too big for this jacket.

The shop around the corner sells fresh bread every morning.
Every morning, fresh bread is sold at the shop around the corner.

My brother is three years older than me.
I'm three years younger than my brother.

The council rejected the plan for a new shopping center.
The proposal to build a new shopping center was turned down by the council.

The phone's battery lasts about two days on a single charge.
A full charge keeps the phone running for roughly two days.

They got married in the same church where her parents had married.
The couple's wedding took place in the church where her parents had been married.

The hikers reached the summit just before sunset.
Shortly before the sun went down, the hikers made it to the top.

The teacher asked the students to hand in their essays by Monday.
The students were told to submit their essays no later than Monday.

Few people attended the meeting.
The meeting was poorly attended.

The road will be closed to traffic during the parade.
No cars will be allowed on the road while the parade is taking place.

The hotel is a five-minute walk from the beach.
You can walk from the hotel to the beach in five minutes.

The company's profits fell for the third quarter in a row.
For three consecutive quarters, the company's profits have declined.

Jake lent his car to his sister for the weekend.
Jake's sister borrowed his car for the weekend.

The lecture was too technical for most of the audience.
Most people in the audience found the lecture too technical to follow.

The medicine should be taken with food.
Take this medication with a meal.

She speaks French like a native.
Her French is as good as a native speaker's.

The train leaves every fifteen minutes during rush hour.
At rush hour, there is a train every quarter of an hour.

The storm knocked out power to thousands of homes.
Thousands of households lost electricity because of the storm.

We ran out of milk, so I went to the store.
I went to the store because there was no milk left.

The garden looks much better since we removed the weeds.
Pulling out the weeds has made the garden look a lot nicer.

Visitors are not allowed to take photographs inside the gallery.
Photography is forbidden for visitors inside the gallery.

The two companies agreed to merge next year.
Next year, the two firms will combine under a merger agreement.

The player was sent off for a second yellow card.
After receiving a second yellow card, the player was ejected from the match.

I usually walk to work when the weather is nice.
On nice days, I normally go to work on foot.

The bakery sold out of bread before noon.
There was no bread left at the bakery by midday.

Her grandfather taught her how to fish.
She learned to fish from her grandfather.

The school will reopen after the summer holidays.
Once the summer break is over, the school will open again.

The government raised the minimum wage by fifty cents.
The minimum wage went up by half a dollar after a government decision.

The painting was stolen from the museum in 1990.
In 1990, thieves took the painting from the museum.

The dog barked all night and kept us awake.
We couldn't sleep because the dog barked the whole night.

The prime minister will visit Canada next month.
Next month, the prime minister is scheduled to travel to Canada.

The new bridge cut travel time between the towns in half.
Since the new bridge opened, it takes only half as long to get from one town to the other.

He forgot his umbrella and got soaked on the way home.
Having left his umbrella behind, he was drenched by the time he got home.

The course is open to anyone over eighteen.
Anyone older than eighteen can sign up for the course.

The vaccine is given in two doses, a month apart.
The vaccine requires two shots spaced one month apart.

My laptop stopped working after I spilled tea on it.
I spilled tea on my laptop, and it hasn't worked since.

The festival attracts about fifty thousand visitors each year.
Roughly 50,000 people come to the festival every year.

The actor thanked his family in his acceptance speech.
In his acceptance speech, the actor expressed gratitude to his family.

The car broke down halfway through our trip.
Our car stopped working when we were halfway there.

She was the first woman to lead the company.
No woman had run the company before her.

The kitchen is being renovated, so we're eating out this week.
We're eating at restaurants this week because our kitchen is under renovation.

The number of tourists visiting the island has dropped.
Fewer tourists are visiting the island than before.

The shop offers free delivery on orders over fifty dollars.
If you spend more than fifty dollars, delivery is free.

He has been learning Japanese for three years.
He started studying Japanese three years ago and is still at it.

The match was broadcast live on national television.
National TV showed the match live.

The zoo's oldest elephant died at the age of sixty.
At sixty years old, the oldest elephant at the zoo passed away.

The results will be announced at the end of the month.
They'll reveal the results when the month ends.

The rent goes up by five percent in January.
Starting in January, the rent will be five percent higher.

It took the firefighters two hours to put out the blaze.
Firefighters needed two hours to extinguish the fire.

The park is closed to visitors after dark.
Visitors can't enter the park once it gets dark.

The student forgot to sign her name on the exam.
The student didn't write her name on the exam paper.

This road is the fastest way to the airport.
No route to the airport is quicker than this road.

Half of the employees work from home on Fridays.
On Fridays, 50 percent of the staff work remotely.

The orchestra played to a packed hall.
The concert hall was full for the orchestra's performance.

They planted tomatoes and beans in the backyard.
Beans and tomatoes were planted in their backyard.

The old factory was turned into apartments.
The former factory building has been converted into flats.

The bank approved our loan application.
Our application for a loan was accepted by the bank.

Smoking is not permitted anywhere on the campus.
The entire campus is smoke-free.

I haven't seen him since we graduated.
The last time I saw him was at our graduation.

The mountain road is dangerous in winter.
In winter, driving on the mountain road is risky.

The author signed copies of her book after the talk.
Following her talk, the author autographed copies of her book.

The committee will meet again in two weeks.
The committee's next meeting is in a fortnight.

Our team scored a goal in the final minute to win the game.
A goal in the last minute won the game for our team.

The cat hid under the bed during the thunderstorm.
During the thunderstorm, the cat took shelter beneath the bed.

The airline lost my luggage on the way to Rome.
On my trip to Rome, the airline misplaced my bags.

The workshop is limited to twenty participants.
No more than twenty people can take part in the workshop.

The new manager is much stricter than the old one.
The previous manager was far more relaxed than the new one.

The movie starts at eight, so we should leave by seven thirty.
Since the film begins at 8:00, we need to head out by 7:30.

The hospital needs more nurses.
There is a shortage of nurses at the hospital.

He won the race despite falling at the start.
Even though he fell at the beginning, he still won the race.

The price of the tickets includes a guided tour.
A guided tour is included in the ticket price.

The team trains three times a week.
The team has practice three days each week.

She turned down the offer because the salary was too low.
She refused the offer since the pay wasn't high enough.

The road to the village was washed away by the flood.
The flood destroyed the road leading to the village.

The office will be closed between Christmas and New Year.
From Christmas until New Year, the office won't be open.

The band is releasing its first album in ten years.
It's been a decade since the band's last album, and a new one is coming out.

Many residents complained about the noise from the construction site.
The construction site's noise led to numerous complaints from residents.

The train was canceled, so we took a taxi.
We had to take a taxi because our train was called off.

Our website will be unavailable for maintenance on Saturday night.
On Saturday night, the site will be down for maintenance.

He is allergic to peanuts.
Peanuts cause him an allergic reaction.

The report was written by a team of six scientists.
Six scientists worked together to write the report.

The town's only cinema closed last year.
Last year, the one cinema in town shut down.

The boat can carry up to twelve passengers.
A maximum of twelve passengers can ride in the boat.
""",
    2,
)

PARAPHRASE_NOT_EQUIVALENT = _records(
    """
The meeting was moved from Monday to Wednesday.
The meeting was moved from Wednesday to Monday.

The store closes at nine on weekdays.
The store opens at nine on weekdays.

Twenty people were injured in the train crash.
Two people were injured in the train crash.

The police officer chased the thief down the street.
Down the street, the thief was chasing a police officer.

She passed her driving test on the first try.
She failed her driving test on the first try.

The company opened a new office in Berlin.
The company closed its office in Berlin.

Maria sent a letter to her grandmother.
A letter from her grandmother arrived for Maria.

The price of gasoline went up by ten cents this week.
Gas got ten cents cheaper this week.

The museum is open every day except Monday.
The museum is open only on Mondays.

The mail carrier was bitten by the neighbor's dog.
The mail carrier's dog bit a neighbor.

The film won the award for best director.
The film was nominated for best director but did not win.

He sold his old bicycle to his cousin.
His cousin sold him an old bicycle.

The bridge will be finished by the end of 2026.
The bridge was finished at the end of 2016.

Our team beat the champions 3-1 on Saturday.
On Saturday, the champions defeated our team by a score of 3-1.

The restaurant serves breakfast until eleven.
The restaurant doesn't start serving breakfast until eleven.

Most students prefer online classes.
Most teachers prefer online classes.

The city banned cars from the old town center.
The city allowed cars back into the old town center.

I'll call you when I arrive at the station.
Call me when you arrive at the station.

The patient's fever went down overnight.
The patient developed a fever overnight.

The new phone is lighter than the previous model.
The previous model weighs less than the new phone.

Anna taught her brother how to swim.
Anna learned to swim from her brother.

The library lost about three hundred books in the flood.
The library received about three hundred books as a donation after the flood.

The train to Boston leaves at 6:15.
The train from Boston arrives at 6:15.

The factory employs about two thousand workers.
The factory employs about two hundred workers.

She has never been to Japan.
She has been to Japan twice.

The government lowered taxes for small businesses.
The government raised taxes for large corporations.

The hikers got lost on the way down the mountain.
The hikers got lost on their way up the mountain.

The concert was moved indoors because of the rain.
The concert went ahead outdoors despite the rain.

Peter is taller than his father.
Peter's father is taller than he is.

The store is offering a discount on winter coats.
The store has raised its prices on winter coats.

The company expects profits to rise next year.
The company's profits rose sharply last year.

The children planted trees along the river.
The workers cut down the trees along the river.

The senator voted for the new law.
The senator voted against the new law.

The plane landed safely in Denver after the engine problem.
Because of an engine problem, the plane never left Denver.

The school added a second language class for beginners.
The school cancelled its only language class for beginners.

I forgot to lock the front door this morning.
This morning I made sure the front door was locked.

The bakery on Elm Street is hiring two cooks.
The bakery on Elm Street fired two cooks.

The exam will take place in the main hall.
The exam results will be posted in the main hall.

Tom lent Sarah fifty dollars.
Sarah loaned fifty dollars to Tom.

The river is too polluted for swimming.
The river is clean enough for swimming.

The hotel has a pool but no gym.
The hotel has a gym but no pool.

The first half of the match was exciting.
The second half of the match was exciting.

The population of the town has doubled since 1980.
Since 1980, the number of people living in the town has fallen by half.

The cat is sleeping on the sofa.
The cat is sleeping under the sofa.

The movie is suitable for children over eight.
The movie is not suitable for children under sixteen.

The manager praised the new employee in front of everyone.
The new employee criticized the manager in front of everyone.

Coffee prices are expected to fall next month.
Tea prices are expected to fall next month.

The shop accepts cash only.
You can't pay with cash at the shop.

Lucy finished the book in one afternoon.
Lucy gave up on the book after one afternoon.

The storm hit the northern coast on Tuesday.
The storm hit the southern coast on Thursday.

Sam is afraid of dogs.
Sam's dog is afraid of thunder.

The bus stop was moved closer to the school.
The school was moved closer to the bus stop.

Most of the guests left before midnight.
Most of the guests arrived after midnight.

The airline added more flights to Lisbon this summer.
The airline stopped flying to Lisbon this summer.

He painted the fence white.
He painted the garden gate white.

The surgeon operated on the boy's left knee.
The surgeon operated on the boy's right knee.

The project was completed two weeks ahead of schedule.
The project wrapped up two weeks later than planned.

The professor criticized the student's essay.
The student found fault with the professor's essay.

The team's coach was fired after the loss.
The team's captain was injured during the loss.

Rain is expected on Saturday afternoon.
The rain is expected to stop by Saturday afternoon.

My sister works at a hospital in Chicago.
My sister was treated at a hospital in Chicago.

The ticket costs twenty euros for adults.
The ticket costs twenty euros for children.

The company recalled ten thousand cars.
The company sold ten thousand cars.

The window was broken before the party started.
The window was broken during the party.

Only three people applied for the job.
Three people were hired for the job.

The novel was written in Spanish and later translated into English.
The novel was written in English and later translated into Spanish.

The baby started walking at ten months.
The baby started talking at ten months.

The park will reopen in spring.
The park will close in spring.

The teacher gave every student an extra week for the project.
The teacher gave only the top students an extra week for the project.

The mayor opened the new library on Friday.
The mayor closed the old library on Friday.

The restaurant lost its star rating last year.
The restaurant earned its first star rating last year.

My flight from Paris was cancelled.
My flight to Paris was delayed.

The lake freezes over almost every winter.
The lake hasn't frozen over in years.

The company moved its headquarters from London to Dublin.
The firm relocated its head office to London after years in Dublin.

The painting sold for two million dollars.
The painting was insured for two million dollars.

Most voters supported the plan for a new park.
Most voters opposed the plan for a new park.

The road is closed to trucks but open to cars.
The road is closed to cars but open to trucks.

The singer canceled the rest of her tour.
The singer added more dates to her tour.

Three of the five windows were left open.
All five windows were left closed.

The volunteers cleaned the beach on Sunday morning.
The volunteers cleaned the park on Sunday morning.

He always takes the stairs instead of the elevator.
He always takes the elevator instead of the stairs.

The package was delivered to the wrong address.
The package was sent back to the sender's address.

The soup is too salty.
The soup needs more salt.

The new law takes effect in January.
The new law was repealed in January.

The kids were allowed to stay up late on Friday.
The kids had to go to bed early on Friday.

The goalkeeper was injured in the first half.
The striker was injured in the second half.

Water levels in the reservoir are unusually high.
Water levels in the reservoir are unusually low.

The gallery bought the painting from a private collector.
A private collector purchased the painting from the gallery.

She moved to Toronto after finishing college.
She moved to Toronto before starting college.

The bakery makes everything without sugar.
The bakery makes everything without flour.

The CEO announced that the company will hire more staff.
The CEO announced that the company will cut staff.

The meeting lasted about twenty minutes.
The meeting started about twenty minutes late.

The children's hospital received a large donation.
The children's hospital made a large donation.

The bridge is closed to pedestrians.
The bridge is open only to pedestrians.

The fire started in the kitchen.
The fire was put out in the kitchen.

The museum has over a thousand paintings.
The museum has fewer than a hundred paintings.

Jenny beat her brother at chess.
Jenny lost a game of chess to her brother.

The new stadium will seat forty thousand fans.
The old stadium seated forty thousand fans.

The weather is warmer in the valley than in the hills.
It's warmer up in the hills than down in the valley.

The printer is out of ink.
The printer is out of paper.

The president met the prime minister in Rome.
The president met the prime minister in Berlin.

All flights were grounded because of the volcanic ash.
All flights resumed once the volcanic ash cleared.

The essay must be at least two thousand words long.
Essays may not exceed two thousand words.

The bakery closes early on Sundays.
The bakery opens late on Sundays.

The students protested the increase in tuition fees.
The students celebrated the cut in tuition fees.

My uncle built the house in 1975.
My uncle sold the house in 1975.

The doctor recommended surgery for his knee.
The doctor advised against surgery for his knee.

The team has won five of its last six games.
Out of its last six games, the team has lost five.

The ferry runs every hour in summer.
The ferry runs only twice a day in summer.

The lecture was moved to a larger room.
The lecture was moved to a later date.

The thief was caught by a security camera.
The thief broke the security camera.

The company makes shoes for children.
The company makes shoes for athletes.

The orchestra will perform Beethoven's Ninth Symphony.
The orchestra will perform Beethoven's Fifth Symphony.

The kids walked to school because the bus was late.
The kids took the bus because it was raining.

The minister resigned after the scandal.
The minister was promoted after the scandal.

Most of the apples were picked in September.
Most of the apples rotted in September.

The shop sells used books and records.
The shop buys used books but not records.

The marathon route passes the city hall.
The marathon starts and finishes at the city hall.

My neighbor's son fixed my car.
I repaired the car belonging to my neighbor's son.

The festival was held in the main square for the first time.
The festival was held in the main square for the last time.

The hospital opened a new wing for cancer patients.
The hospital closed its wing for cancer patients.

Only members can use the pool on weekends.
Anyone can use the pool except on weekends.

The coach praised the defense after the game.
The coach blamed the defense after the game.

The farmer sold twenty cows at the market.
At the market, the farmer purchased twenty cows.

He finished second in the spelling contest.
He finished last in the spelling contest.

The town voted to build a new school.
The town voted to close its old school.

The heater turns on automatically at six in the morning.
At 6 a.m., the heater switches itself off.

The company's new app is free for students.
The company's new app is free for teachers.

Emma arrived an hour before the ceremony.
Emma got there an hour after the ceremony had ended.

The river flows from the mountains to the sea.
The river was dammed between the mountains and the sea.
""",
    2,
)


# ---------------------------------------------------------------------------------------------
# news_topic: invented headlines and ledes
# ---------------------------------------------------------------------------------------------

NEWS_WORLD = _items("""
Leaders from more than forty countries gathered in Nairobi on Monday for a summit on water
    shortages across East Africa.
Flooding along the Danube forced thousands of residents from their homes in three countries.
The two neighboring states signed a ceasefire agreement after weeks of talks hosted by Norway.
Voters in Chile head to the polls on Sunday in a closely watched presidential runoff.
The United Nations warned that food supplies in the region could run out within a month.
An earthquake of magnitude 6.8 struck off the coast of Indonesia early Tuesday, prompting a
    brief tsunami warning. No damage has been reported so far.
Thousands marched through the capital demanding early elections after the prime minister's
    resignation.
The foreign ministers of France and Germany met in Paris to discuss a joint response to the
    border crisis.
Rescue teams are searching for survivors after a ferry capsized in heavy seas near the Philippines.
The new president was sworn in on Saturday, promising to fight corruption and reform the courts.
Refugee camps along the border are struggling to cope with a sharp rise in arrivals, aid groups say.
Parliament voted to dissolve itself, setting the stage for the country's third election in two
    years.
Wildfires fanned by strong winds have destroyed hundreds of homes on the Greek island.
    Firefighting planes from Italy and Spain are expected to arrive on Thursday.
Ambassadors were recalled from both capitals as a diplomatic dispute over fishing rights escalated.
A state of emergency was declared in the province after days of violent protests over fuel prices.
The peace talks collapsed late Thursday when one delegation walked out over the question of
    prisoner exchanges.
Heavy monsoon rains have killed at least sixty people in Bangladesh, officials said.
The European Union agreed on new sanctions against the regime following the disputed election.
The country's opposition leader was released from prison after serving four years of a six-year
    sentence.
Aid convoys reached the besieged city for the first time in three months.
Protesters in the capital clashed with police for a second night after the government raised
    bread prices.
The king addressed the nation on television, calling for calm after the contested vote.
A cholera outbreak has spread to four provinces, the health ministry confirmed on Wednesday.
Officials say the death toll from the landslide in northern Peru has risen to twenty-three.
The two Koreas held their first high-level talks in over a year at the border village of Panmunjom.
Thousands of migrants remain stranded at the border after the neighboring country closed its
    crossings.
The African Union sent a team of mediators to help end the political standoff.
The government announced a nationwide curfew following a wave of attacks on police stations.
A typhoon made landfall in southern Japan, cutting power to nearly half a million homes. Schools
    and train lines in the region will stay closed on Friday.
The prime minister survived a no-confidence vote by a margin of just three votes.
Negotiators reached a deal to release dozens of hostages held for more than a year.
Hundreds of villagers were evacuated as the volcano began spewing ash over the surrounding farmland.
The foreign minister's visit to Beijing marks the first such trip in a decade.
International observers said the election was largely free and fair despite some delays at
    polling stations.
The country reopened its embassy in the neighboring capital after a two-year closure.
A drought in the Horn of Africa has left millions of people in need of food aid.
The UN Security Council will hold an emergency session on the escalating conflict.
Heavy snowfall has cut off dozens of mountain villages in northern Pakistan.
The ruling party lost its majority in regional elections held across the country on Sunday.
Demonstrators gathered outside parliament to protest a proposed change to the constitution.
The prime ministers of India and Japan agreed to expand cooperation on maritime security.
A bus carrying pilgrims plunged into a ravine in Nepal, killing at least eighteen people.
Lawmakers approved a bill granting citizenship to children born in the country to foreign parents.
Thousands gathered in the central square to mourn the former president, who died on Friday at 91.
The border between the two countries reopened after being closed for nearly three years.
    Families separated by the closure lined up at the crossing before dawn.
Several towns along the coast were ordered to evacuate ahead of the approaching cyclone.
The government and rebel groups signed a peace accord ending a decade-long civil war.
Police arrested the leader of an armed group accused of kidnapping foreign aid workers.
A new coalition government was finally formed after six months of negotiations.
Record heat across southern Europe has prompted health warnings in Spain, Italy and Greece.
Diplomats said the nuclear talks would resume in Vienna next month.
The island nation declared a national emergency as rising seas flooded its main airport.
A general strike shut down schools, hospitals and public transport across the country.
Election officials began recounting ballots in two disputed districts.
Emergency crews are racing to contain an oil spill off the coast of Mauritius.
The president pardoned more than two hundred political prisoners to mark independence day.
Relief agencies appealed for urgent donations after floods swept away entire villages.
The country's highest court annulled the election results and ordered a new vote within sixty days.
Tensions rose in the region after warships from both countries were spotted near the disputed
    islands.
The refugee agency said more than a million people have fled the fighting since January.
The first democratically elected mayor in the city's history took office on Monday.
Police fired tear gas to disperse crowds protesting the arrest of a popular journalist.
Foreign ministers from the region met to discuss the safe return of families displaced by the war.
Hundreds of firefighters from neighboring countries arrived to help battle forest fires in Canada.
The government expelled three foreign diplomats accused of spying.
""")

NEWS_SPORTS = _items("""
The home side scored twice in stoppage time to snatch a 3-2 win over the league leaders.
The veteran goalkeeper announced his retirement after eighteen seasons with the club.
She won her third straight Wimbledon title with a commanding straight-sets victory in the final.
The Lakers beat the Celtics 112-104 behind 35 points from their star forward.
Kenyan runners swept the podium at the Boston Marathon on Monday.
The club sacked its manager after a run of seven defeats in eight matches. A caretaker coach
    will take charge for Saturday's game.
The rookie quarterback threw for three touchdowns in his first professional start.
Rain delayed the final day of the cricket Test, leaving the series finely balanced.
The Olympic champion was disqualified from the 100 meters after a false start.
The Tour de France leader extended his advantage with a dramatic solo win on the mountain stage.
The striker completed a record transfer to the Spanish giants on Tuesday.
A late penalty earned the visitors a 1-1 draw in the derby.
The national rugby team named three uncapped players in its squad for the autumn internationals.
The golfer sank a thirty-foot putt on the final hole to win the tournament by one stroke.
A knee injury has ruled the captain out for the rest of the season.
The Yankees clinched the division title with a 6-2 victory over the Red Sox.
The world champion retained her title after a gripping five-set match.
The hockey team ended its playoff drought with an overtime win in Game 7. Fans poured into the
    streets around the arena to celebrate.
The 17-year-old swimmer broke the world record in the 400-meter individual medley.
The boxer knocked out his opponent in the third round to claim the heavyweight belt.
The league announced that next season will begin two weeks later than usual.
Fans invaded the pitch to celebrate after the club secured promotion on the final day.
The coach praised his team's defense after a hard-fought 14-10 win.
The sprinter anchored the relay team to gold in a new championship record.
The Formula One driver took pole position in Monaco for the second year running.
The underdogs stunned the defending champions in the first round of the cup.
The tennis star withdrew from the Australian Open with a wrist injury.
The basketball team retired his number in a ceremony before Sunday's game.
The ski jumper soared to victory in front of a home crowd in Oslo.
The club's new stadium will host its first match in August.
The midfielder was named player of the year after scoring 22 goals.
The women's national team qualified for the World Cup with a 4-0 win over Portugal.
The marathon runner collapsed near the finish but got back up to complete the race.
The cyclist was stripped of his title after failing a doping test.
The batter hit a walk-off home run in the bottom of the ninth inning. It was his third
    game-winning hit of the season.
The wrestler won her first Olympic gold medal in the 62-kilogram class.
The team's top scorer is doubtful for Saturday's final with a hamstring strain.
The figure skater landed a quadruple jump to take the lead after the short program.
Spain beat Italy on penalties to reach the final.
The rowing crew won by half a length in the annual race on the Thames.
The veteran pitcher struck out twelve batters in a complete-game shutout.
The club confirmed that its head coach has signed a three-year contract extension.
The decathlete set a personal best in the javelin on his way to a silver medal.
The top pick in this year's NBA draft is expected to be a 19-year-old center from France.
The referee sent off two players in a fiery first half.
The team overturned a ten-point deficit to win in the final quarter.
The Olympic torch relay will pass through forty cities before reaching the stadium.
The surfer caught a near-perfect wave in the final heat to win the world title.
The club signed a young winger on loan until the end of the season.
Both teams were cautious in a goalless draw that did little to excite the crowd.
The volleyball team won its first national championship in school history.
The jockey rode his fourth winner of the day in the feature race.
The captain scored a century to rescue his side from a poor start.
The quarterback was sacked five times as the team fell to its third straight loss.
Organizers confirmed that the marathon will go ahead despite the forecast heat. Extra water
    stations will be set up along the course.
The striker's hat trick sent the team to the top of the table.
The tennis player saved three match points before winning in a third-set tiebreak.
The ice hockey league suspended the defenseman for ten games for a dangerous hit.
The cycling team unveiled a new lineup for the spring classics.
The under-21 side beat Brazil to win its first youth title.
The gymnast won gold on the balance beam with a nearly flawless routine.
The club's fans sold out the away section within minutes.
The badminton pair won the doubles final in straight games.
The coach said the team would rest several starters before the playoffs.
The pole vaulter cleared six meters for the first time in his career.
""")

NEWS_BUSINESS = _items("""
Shares of the carmaker fell eight percent after it cut its sales forecast for the year.
The central bank raised interest rates by a quarter point to fight stubborn inflation.
The supermarket chain agreed to buy its smaller rival for 2.4 billion dollars.
Oil prices climbed to a six-month high as producers extended output cuts.
The airline reported its first quarterly profit since the start of the pandemic.
Unemployment fell to 3.9 percent in May, the lowest level in two years.
The retailer plans to close 150 stores and cut about 4,000 jobs. Most of the closures will
    happen before the end of the year.
The coffee chain's sales rose eleven percent, helped by strong demand for cold drinks.
Investors sold off bank stocks after a mid-sized lender reported heavy losses.
The euro weakened against the dollar after disappointing factory data from Germany.
The brewer's chief executive will step down at the end of the year after a decade in charge.
Housing prices rose for the ninth straight month, according to a new industry report.
The toy maker said holiday sales were weaker than expected and lowered its profit outlook.
Workers at the car plant voted to strike over pay and pensions.
The fashion brand is preparing to list its shares on the Paris stock exchange.
Consumer spending slowed in the third quarter as households tightened their belts.
The shipping giant warned that higher fuel costs would hit its profits.
The government will sell its remaining stake in the national postal service.
Gold prices hit a record high as investors sought safety amid market turmoil.
The bank agreed to pay a 200-million-dollar fine to settle charges of misleading customers.
The furniture retailer saw online orders double while store traffic fell.
Inflation eased to 2.8 percent in April, giving households some relief.
The mining company posted record earnings on the back of high copper prices.
A shortage of truck drivers is pushing up delivery costs for retailers, industry groups say.
The insurance group announced a merger that will create the country's largest insurer. The deal
    still needs approval from regulators.
Stocks on Wall Street closed lower as investors worried about rising bond yields.
The steelmaker will invest 1 billion dollars in a new low-emission plant.
The clothing company recalled thousands of children's jackets over a problem with the zippers.
The country's trade deficit widened as imports of fuel surged.
Farm incomes fell sharply this year as wheat prices dropped.
The hotel group said bookings for the summer season were already above last year's level.
The budget airline ordered fifty new jets in a deal worth billions.
The family-owned bakery chain was sold to a private equity firm.
Mortgage rates dipped slightly this week, offering a small boost to home buyers.
The drugmaker's shares jumped twelve percent after regulators approved its best-selling product
    for wider use.
Retail sales rose 0.6 percent in March, beating economists' expectations.
The dairy cooperative will raise the price it pays farmers for milk next month.
The car rental firm filed for bankruptcy protection after years of mounting debt.
The luxury goods maker said demand from Chinese shoppers had recovered strongly.
The energy company will pay shareholders a special dividend after a bumper year.
Small businesses say rising rents are forcing them out of the city center.
The finance minister unveiled a budget that cuts corporate taxes by two points.
The pension fund sold its entire stake in the tobacco company.
Tourism revenue hit a record last year as international visitors returned. Hotels in the capital
    reported occupancy above ninety percent.
The chocolate maker raised prices for the second time this year, citing the cost of cocoa.
The stock exchange suspended trading in the company's shares pending an announcement.
The department store chain was rescued by a last-minute takeover deal.
Wage growth outpaced inflation for the first time in three years.
The brewery cut its workforce by ten percent as beer sales continued to decline.
The logistics firm opened a new distribution center that will employ 800 people.
The country's economy grew 1.2 percent in the second quarter, faster than forecast.
The restaurant chain is selling its outlets to franchise owners to cut costs.
Shareholders rejected the chief executive's proposed pay package at the annual meeting.
The cereal maker is selling its snack division to focus on breakfast foods.
The property developer delayed the sale of its headquarters as office prices slumped.
The credit card company reported that holiday spending rose four percent.
The national carrier is in talks to sell a minority stake to a Gulf airline.
Copper prices fell as demand from factories in Asia slowed.
The sportswear brand's profits dropped as unsold stock piled up in its warehouses.
The bank will close forty branches as more customers manage their money online.
The jeweler's sales rose sharply in the run-up to Valentine's Day.
The government announced subsidies for small manufacturers hit by high energy bills.
The cosmetics company agreed to buy a skincare brand for 600 million dollars.
Factory orders rose for a third straight month, suggesting the manufacturing slump is easing.
The grocery chain froze prices on two hundred basic items until the end of the year.
""")

NEWS_SCITECH = _items("""
Astronomers have detected water vapor in the atmosphere of a planet orbiting a nearby star.
The smartphone maker unveiled a foldable phone with a battery that lasts two days.
Researchers have developed a blood test that can spot several types of cancer early.
A software bug caused the popular messaging app to crash for millions of users on Tuesday. The
    company said a fix was rolled out within three hours.
The space agency's rover collected its first rock sample from the floor of a Martian crater.
Melting glaciers in the Alps have exposed plant remains thousands of years old, scientists say.
A new study finds that bees can learn to recognize human faces.
Engineers have built a robot that can fold laundry nearly as quickly as a person.
The open-source project released a new version of its operating system with better battery
    management.
Physicists have measured the mass of a subatomic particle with record precision.
Hackers stole the personal data of two million customers in a breach at an online retailer,
    security researchers said.
A new telescope in Chile captured its first images of distant galaxies.
Researchers trained an artificial intelligence model to predict the shapes of proteins from
    their genetic code.
The chipmaker showed off a processor that uses half the power of its predecessor.
A deep-sea expedition discovered dozens of new species living near underwater volcanoes.
Scientists have found that a common gut bacterium may help protect against allergies.
The next video game console will support games in 8K resolution, the company said.
A rocket carrying three weather satellites lifted off successfully from the launch site.
Researchers created a battery made from seaweed that can power small devices.
A new computer virus spreads through fake software update messages, security experts warned.
Biologists have discovered a frog species that glows under ultraviolet light.
The web browser's latest update blocks tracking cookies by default.
Scientists used gene editing to make tomatoes that stay fresh longer. The modified fruit lasted
    twice as long on the shelf in early tests.
Climate researchers say the last decade was the warmest on record.
Engineers have built a drone that can plant thousands of tree seeds in a single day.
A comet will be visible to the naked eye next week for the first time in decades.
The company's new headset lets users see digital objects placed in the real room around them.
Neuroscientists have mapped every connection in the brain of a fruit fly.
A solar-powered plane completed a nonstop flight across the Atlantic.
Researchers warn that a popular password manager had a flaw that exposed saved logins.
A study of ancient DNA suggests that dogs were domesticated more than fifteen thousand years ago.
The social network is testing a feature that lets users edit messages after sending them.
NASA's probe sent back close-up images of Jupiter's largest moon.
Scientists have grown miniature human livers in the lab from stem cells.
A new material can pull drinking water out of desert air, engineers report.
The online encyclopedia switched to a faster search engine built on machine learning.
Physicists in Geneva recorded particle collisions at the highest energy ever achieved.
Astronomers watched a huge eruption on Jupiter's moon Io through a ground-based telescope.
Researchers have taught a four-legged robot to open doors with one of its front legs.
The laptop maker released a model with a screen that owners can replace at home.
Marine biologists recorded humpback whales singing a new song that spread across the Pacific.
A malaria vaccine showed strong results in a large clinical trial. Researchers hope it can be
    approved within two years.
The app uses the phone's camera to identify plants and insects in seconds.
Engineers tested a train that floats on magnets at more than 600 kilometers per hour.
A new map of the Milky Way contains the positions of nearly two billion stars.
Scientists discovered that octopuses change color even while they sleep.
A supercomputer in Japan was ranked the fastest in the world for the second year.
The programming language's new release adds features for writing faster code.
Researchers found microplastics in snow samples taken near the summit of Everest.
A quantum computer solved in minutes a problem that would take ordinary machines thousands of
    years, the team claims.
A software update for the electric car adds a feature that parks it on its own.
Paleontologists unearthed a nearly complete dinosaur skeleton in Argentina.
Astronauts aboard the space station grew lettuce in a small orbital garden.
The search engine now answers questions with short summaries written by artificial intelligence.
A study suggests that children who sleep less are more likely to catch colds.
Engineers designed a bridge sensor that warns of cracks before they become dangerous.
Scientists captured the first image of the shadow of a black hole.
A smart thermostat cut home heating bills by a fifth in a year-long trial.
Researchers have created a transparent wood that could replace glass in windows.
The email service added end-to-end encryption for all of its users.
A satellite launched last year has mapped the entire ocean floor around Antarctica. The data
    will help scientists predict how fast the ice shelves are melting.
A new hearing aid uses artificial intelligence to filter out background noise.
Geologists say the fault line beneath the city is longer than previously thought.
Chemists have found a cheaper way to turn carbon dioxide into fuel.
The tablet's new stylus can detect how hard the user is pressing.
""")


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

Pair = tuple[str, "str | None"]
Row = dict[str, object]


class _Deck:
    """Hand out fragments in shuffled rounds so that each one is used about equally often."""

    def __init__(self, items: list[str], rng: random.Random) -> None:
        self._items = list(items)
        self._rng = rng
        self._stack: list[str] = []

    def draw(self) -> str:
        if not self._stack:
            self._stack = list(self._items)
            self._rng.shuffle(self._stack)
        return self._stack.pop()


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    if first == "I" or first.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def _compose(
    recipes: list[tuple[int, Callable[[], tuple[str, frozenset[str]]]]],
    taken: set[str],
) -> list[str]:
    """Run each recipe until it has produced its count of new texts.

    A recipe returns the text and the set of fragments it used; a combination of fragments is
    used at most once, whatever the order or connective.
    """
    used_combos: set[frozenset[str]] = set()
    texts: list[str] = []
    for count, recipe in recipes:
        made = attempts = 0
        while made < count:
            attempts += 1
            if attempts > 10_000:
                raise RuntimeError("could not compose enough distinct examples")
            text, combo = recipe()
            if text in taken or combo in used_combos or len(combo) < 2:
                continue
            taken.add(text)
            used_combos.add(combo)
            texts.append(text)
            made += 1
    return texts


def _movie_reviews(
    full: list[str],
    aspects: list[str],
    verdicts: list[str],
    mild_opposite: list[str],
    rng: random.Random,
) -> list[str]:
    aspect = _Deck(aspects, rng)
    verdict = _Deck(verdicts, rng)
    mild = _Deck(mild_opposite, rng)

    def two_aspects() -> tuple[str, frozenset[str]]:
        a, b = aspect.draw(), aspect.draw()
        return f"{_cap(a)}, and {b}.", frozenset((a, b))

    def verdict_first() -> tuple[str, frozenset[str]]:
        v, a = verdict.draw(), aspect.draw()
        return f"{v} {_cap(a)}.", frozenset((v, a))

    def verdict_last() -> tuple[str, frozenset[str]]:
        a, v = aspect.draw(), verdict.draw()
        return f"{_cap(a)}. {v}", frozenset((a, v))

    def contrast_but() -> tuple[str, frozenset[str]]:
        m, a, v = mild.draw(), aspect.draw(), verdict.draw()
        return f"{_cap(m)}, but {a}. {v}", frozenset((m, a, v))

    def contrast_although() -> tuple[str, frozenset[str]]:
        m, a = mild.draw(), aspect.draw()
        return f"Although {m}, {a}.", frozenset((m, a))

    taken = set(full)
    composed = _compose(
        [
            (18, two_aspects),
            (13, verdict_first),
            (13, verdict_last),
            (14, contrast_but),
            (12, contrast_although),
        ],
        taken,
    )
    return full + composed


def _product_reviews(
    full: list[str],
    specifics: list[str],
    verdicts: list[str],
    extras: list[str],
    mild_opposite: list[str],
    rng: random.Random,
) -> list[str]:
    specific = _Deck(specifics, rng)
    verdict = _Deck(verdicts, rng)
    extra = _Deck(extras, rng)
    mild = _Deck(mild_opposite, rng)
    opener = _Deck(PRODUCT_OPENERS, rng)

    def opener_specific() -> tuple[str, frozenset[str]]:
        o, s = opener.draw(), specific.draw()
        return f"{o} {s}", frozenset((o, s))

    def specific_verdict() -> tuple[str, frozenset[str]]:
        s, v = specific.draw(), verdict.draw()
        return f"{s} {v}", frozenset((s, v))

    def contrast() -> tuple[str, frozenset[str]]:
        m, s = mild.draw(), specific.draw()
        if " but " in s:  # avoid "X, but Y but Z"; an empty combo makes _compose retry
            return "", frozenset()
        return f"{m}, but {_lower_first(s)}", frozenset((m, s))

    def opener_specific_verdict() -> tuple[str, frozenset[str]]:
        o, s, v = opener.draw(), specific.draw(), verdict.draw()
        return f"{o} {s} {v}", frozenset((o, s, v))

    def specific_extra() -> tuple[str, frozenset[str]]:
        s, e = specific.draw(), extra.draw()
        return f"{s} {e}", frozenset((s, e))

    taken = set(full)
    composed = _compose(
        [
            (14, opener_specific),
            (20, specific_verdict),
            (20, contrast),
            (12, opener_specific_verdict),
            (14, specific_extra),
        ],
        taken,
    )
    return full + composed


def _quota(size: int, n_labels: int) -> list[int]:
    """Per-label counts for a split of ``size`` rows, as equal as possible."""
    base, extra = divmod(size, n_labels)
    return [base + (1 if label < extra else 0) for label in range(n_labels)]


def _split_pools(pools: list[list[Pair]], rng: random.Random) -> dict[str, list[Row]]:
    """Split per-label pools of independent examples into balanced, shuffled splits."""
    pools = [list(pool) for pool in pools]
    for pool in pools:
        rng.shuffle(pool)
    splits: dict[str, list[Row]] = {}
    for split, size in SPLITS:
        rows: list[Row] = []
        for label, count in enumerate(_quota(size, len(pools))):
            for _ in range(count):
                text_a, text_b = pools[label].pop()
                rows.append({"text_a": text_a, "text_b": text_b, "label": label})
        rng.shuffle(rows)
        splits[split] = rows
    leftover = sum(len(pool) for pool in pools)
    if leftover:
        raise ValueError(f"{leftover} written examples were not used; fix the data counts")
    return splits


def _split_groups(groups: list[tuple[str, ...]], rng: random.Random) -> dict[str, list[Row]]:
    """Split (text_a, text_b for label 0, text_b for label 1, ...) groups into splits.

    All rows that share a text_a land in the same split.  Where a split's label quota is not a
    whole number of groups, the remaining groups contribute only the labels still needed.
    """
    order = list(groups)
    rng.shuffle(order)
    n_labels = len(order[0]) - 1
    splits: dict[str, list[Row]] = {}
    for split, size in SPLITS:
        quota = _quota(size, n_labels)
        complete = min(quota)
        extras = [count - complete for count in quota]
        rows: list[Row] = []
        wanted = [list(range(n_labels))] * complete
        wanted += [
            [label for label in range(n_labels) if extras[label] > i] for i in range(max(extras))
        ]
        for labels in wanted:
            text_a, *hypotheses = order.pop()
            rows.extend({"text_a": text_a, "text_b": hypotheses[lb], "label": lb} for lb in labels)
        rng.shuffle(rows)
        splits[split] = rows
    if order:
        raise ValueError(f"{len(order)} written groups were not used; fix the data counts")
    return splits


def _build_movie(rng: random.Random) -> dict[str, list[Row]]:
    negative = _movie_reviews(
        MOVIE_FULL_NEGATIVE,
        MOVIE_ASPECT_NEGATIVE,
        MOVIE_VERDICT_NEGATIVE,
        MOVIE_MILD_POSITIVE,
        rng,
    )
    positive = _movie_reviews(
        MOVIE_FULL_POSITIVE,
        MOVIE_ASPECT_POSITIVE,
        MOVIE_VERDICT_POSITIVE,
        MOVIE_MILD_NEGATIVE,
        rng,
    )
    return _split_pools([[(t, None) for t in negative], [(t, None) for t in positive]], rng)


def _build_product(rng: random.Random) -> dict[str, list[Row]]:
    negative = _product_reviews(
        PRODUCT_FULL_NEGATIVE,
        PRODUCT_SPECIFIC_NEGATIVE,
        PRODUCT_VERDICT_NEGATIVE,
        PRODUCT_EXTRA_NEGATIVE,
        PRODUCT_MILD_POSITIVE,
        rng,
    )
    positive = _product_reviews(
        PRODUCT_FULL_POSITIVE,
        PRODUCT_SPECIFIC_POSITIVE,
        PRODUCT_VERDICT_POSITIVE,
        PRODUCT_EXTRA_POSITIVE,
        PRODUCT_MILD_NEGATIVE,
        rng,
    )
    return _split_pools([[(t, None) for t in negative], [(t, None) for t in positive]], rng)


def _build_everyday_nli(rng: random.Random) -> dict[str, list[Row]]:
    return _split_groups(EVERYDAY_NLI, rng)


def _build_fact_nli(rng: random.Random) -> dict[str, list[Row]]:
    return _split_groups(FACT_NLI, rng)


def _build_paraphrase(rng: random.Random) -> dict[str, list[Row]]:
    def maybe_swap(pair: tuple[str, ...]) -> Pair:
        first, second = pair
        return (second, first) if rng.random() < 0.5 else (first, second)

    not_equivalent = [maybe_swap(pair) for pair in PARAPHRASE_NOT_EQUIVALENT]
    equivalent = [maybe_swap(pair) for pair in PARAPHRASE_EQUIVALENT]
    return _split_pools([not_equivalent, equivalent], rng)


def _build_news(rng: random.Random) -> dict[str, list[Row]]:
    pools = [NEWS_WORLD, NEWS_SPORTS, NEWS_BUSINESS, NEWS_SCITECH]
    return _split_pools([[(t, None) for t in pool] for pool in pools], rng)


TASKS: list[dict[str, object]] = [
    {
        "name": "movie_sentiment",
        "type": "sentiment",
        "label_names": ["negative", "positive"],
        "label_words": ["negative", "positive"],
        "description": "Binary sentiment classification of short English movie reviews.",
        "text_a_field_meaning": "a short movie review",
        "text_b_field_meaning": None,
        "build": _build_movie,
    },
    {
        "name": "product_sentiment",
        "type": "sentiment",
        "label_names": ["negative", "positive"],
        "label_words": ["negative", "positive"],
        "description": (
            "Binary sentiment classification of short reviews of products bought online "
            "(electronics, kitchen, clothing, books, toys and more)."
        ),
        "text_a_field_meaning": "a short review of a product bought online",
        "text_b_field_meaning": None,
        "build": _build_product,
    },
    {
        "name": "everyday_nli",
        "type": "nli",
        "label_names": ["entailment", "neutral", "contradiction"],
        "label_words": ["yes", "maybe", "no"],
        "description": (
            "Three-way natural language inference: does a sentence describing an everyday "
            "scene entail, leave open, or contradict a hypothesis?"
        ),
        "text_a_field_meaning": "premise: a sentence describing an everyday scene",
        "text_b_field_meaning": "hypothesis: a sentence to judge against the premise",
        "build": _build_everyday_nli,
    },
    {
        "name": "fact_nli",
        "type": "nli",
        "label_names": ["entailment", "not_entailment"],
        "label_words": ["yes", "no"],
        "description": "Two-way textual entailment: does a short factual passage entail a claim?",
        "text_a_field_meaning": (
            "a short factual passage (1-2 sentences on geography, science, history, work or sports)"
        ),
        "text_b_field_meaning": "a claim that the passage may or may not entail",
        "build": _build_fact_nli,
    },
    {
        "name": "paraphrase_pairs",
        "type": "paraphrase",
        "label_names": ["not_equivalent", "equivalent"],
        "label_words": ["false", "true"],
        "description": (
            "Paraphrase detection: do two sentences on the same topic mean the same thing?"
        ),
        "text_a_field_meaning": "the first sentence",
        "text_b_field_meaning": "the second sentence",
        "build": _build_paraphrase,
    },
    {
        "name": "news_topic",
        "type": "topic",
        "label_names": ["world", "sports", "business", "sci/tech"],
        "label_words": ["world", "sports", "business", "technology"],
        "description": "Four-way topic classification of short news headlines and ledes.",
        "text_a_field_meaning": "a one- or two-sentence news headline or lede",
        "text_b_field_meaning": None,
        "build": _build_news,
    },
]


def _check(name: str, n_labels: int, pair_task: bool, splits: dict[str, list[Row]]) -> None:
    """Fail loudly if a task breaks the size, balance, length or overlap rules."""
    seen_pairs: set[tuple[object, object]] = set()
    split_of_text_a: dict[object, str] = {}
    for split, size in SPLITS:
        rows = splits[split]
        assert len(rows) == size, (name, split, len(rows))
        counts = [sum(row["label"] == label for row in rows) for label in range(n_labels)]
        assert sorted(counts, reverse=True) == _quota(size, n_labels), (name, split, counts)
        for row in rows:
            text_a, text_b = row["text_a"], row["text_b"]
            assert isinstance(text_a, str) and text_a.strip(), (name, row)
            assert 5 <= len(text_a.split()) <= 35, (name, text_a)
            if pair_task:
                assert isinstance(text_b, str) and text_b.strip(), (name, row)
                assert 4 <= len(text_b.split()) <= 35, (name, text_b)
                assert text_a != text_b, (name, row)
            else:
                assert text_b is None, (name, row)
            assert (text_a, text_b) not in seen_pairs, (name, row)
            seen_pairs.add((text_a, text_b))
            # A premise/passage may carry several hypotheses, but never crosses splits.
            assert split_of_text_a.setdefault(text_a, split) == split, (name, text_a)


def main(out_dir: Path = OUT_DIR) -> None:
    all_texts_unique = {"movie_sentiment", "product_sentiment", "paraphrase_pairs", "news_topic"}
    for task in TASKS:
        name = str(task["name"])
        build = task["build"]
        assert callable(build)
        splits = build(random.Random(f"{SEED}-{name}"))
        n_labels = len(task["label_names"])  # type: ignore[arg-type]
        pair_task = task["text_b_field_meaning"] is not None
        _check(name, n_labels, pair_task, splits)
        if name in all_texts_unique:
            texts = [
                text
                for rows in splits.values()
                for row in rows
                for text in (row["text_a"], row["text_b"])
                if text is not None
            ]
            assert len(texts) == len(set(texts)), f"{name}: a sentence occurs twice"

        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        meta = {key: value for key, value in task.items() if key != "build"}
        meta["provenance"] = PROVENANCE
        with open(folder / "task.json", "w", encoding="utf-8", newline="\n") as handle:
            handle.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        for split, _ in SPLITS:
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as handle:
                for row in splits[split]:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        sizes = ", ".join(f"{split}={len(splits[split])}" for split, _ in SPLITS)
        print(f"wrote {folder}: {sizes}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write the built-in demo task folders.")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: the "
                    "package's demo_tasks)")
    main(ap.parse_args().out)
