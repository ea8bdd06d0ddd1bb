"""The synthetic store of the outreach_scale bench: a seeded pool of ~3,000 English and Chinese
utterances (intent requests from templates, Zipf-drawn chit-chat) and a SQLite file with users,
calls and turns filled in bulk. The distribution is described in bench/outreach_scale.py."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from voiceagent.outreach.analysis.embedding import normalised

USERS = int(os.environ.get("OUTREACH_SCALE_USERS", "100000"))
TURNS = int(os.environ.get("OUTREACH_SCALE_TURNS", str(USERS * 10)))
CALLS = USERS * 2
SEED = 20240611
ENGLISH_SHARE = 0.6
ASKER_SHARE = 0.20
REPEAT_SHARE = 0.30  # of askers: the same intent asked again in another turn
SECOND_INTENT_SHARE = 0.10  # of askers: a second, different intent
NO_ITEM_SHARE = 0.05
LIVE_SHARE = 0.005
NODES = [f"bench-scale-node-{n}" for n in range(1, 5)]
SINK_NODE = "bench-scale-sink"
HEARTBEAT_S = 5.0
DAYS = 30
PER_INTENT_LANGUAGE = 125
CHITCHAT = {"en": 1100, "zh": 900}
ZIPF_S = 1.0


def log(message: str) -> None:
    print(f"bench outreach_scale: {message}", flush=True)


# -- the utterance pool ---------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """A word list written as one "|"-separated string: compact, and the formatter leaves it be."""
    return text.split("|")


ITEMS_EN = _words(
    "order|package|parcel|headphones|laptop|phone case|blender|shoes|jacket|books|printer|monitor|"
    "keyboard|coffee machine|vacuum cleaner"
)
ITEMS_ZH = _words(
    "订单|包裹|快递|耳机|笔记本电脑|手机壳|搅拌机|鞋子|外套|书|打印机|显示器|键盘|咖啡机|吸尘器"
)
PLANS_EN = _words("premium plan|basic plan|family plan|business plan|student plan")
PLANS_ZH = _words("高级套餐|基础套餐|家庭套餐|商务套餐|学生套餐")
PRODUCTS_EN = _words("robot vacuum|smart watch|tablet|router|air purifier|electric toothbrush")
PRODUCTS_ZH = _words("扫地机器人|智能手表|平板电脑|路由器|空气净化器|电动牙刷")
DAYS_EN = _words("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday")
DAYS_ZH = _words("周一|周二|周三|周四|周五|周六")
WHEN_EN = _words("next week|tomorrow|this afternoon|on Friday morning|sometime next month")
WHEN_ZH = _words("下周|明天|今天下午|周五上午|下个月")
WHO_EN = _words("a doctor|the dentist|someone|a technician|an advisor")
WHO_ZH = _words("医生|牙医|技术人员|顾问|客服经理")
PRE_EN = _words("|hi, |um, |yeah, |hello, |so |okay so ")
PRE_ZH = _words("|你好，|嗯，|那个，|请问|喂，")
POST_EN = _words("?|| please|, it's been a week| by the way")
POST_ZH = _words("？||呀？|，都一个星期了|，麻烦你")
INTENT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "order_status": {
        "en": _words(
            "where is my {item}|when will my {item} arrive|has my {item} shipped yet|"
            "I ordered a {item} {when} and it still hasn't come|can you track my {item} for me|"
            "my {item} still hasn't been delivered"
        ),
        "zh": _words(
            "我的{item}到哪里了|{item}什么时候能到|我买的{item}发货了吗|我的{item}还没收到|帮我查一下{item}的物流|{item}怎么还没送到"
        ),
    },
    "book_appointment": {
        "en": _words(
            "I'd like to book an appointment {when}|can I move my appointment to {day}|"
            "I need to cancel my appointment on {day}|I want to see {who} {when}|"
            "can you book me in with {who} on {day}"
        ),
        "zh": _words(
            "我想预约{when}|能把我的预约改到{day}吗|我要取消{day}的预约|我想{when}约{who}|帮我约一下{day}的{who}"
        ),
    },
    "refund": {
        "en": _words(
            "I want a refund for my {item}|how long does a refund for the {item} take|"
            "I was charged twice for my {item}, can I get my money back|"
            "I returned the {item}, where is my refund|can I get my money back for the {item}"
        ),
        "zh": _words(
            "我想退{item}的钱|{item}的退款要多久|{item}被扣了两次钱，能退吗|我把{item}退回去了，钱什么时候退给我|{item}能退款吗"
        ),
    },
    "product_question": {
        "en": _words(
            "how does the {plan} work|which {product} should I buy|what does the {plan} cost|"
            "what's the difference between the {plan} and the {plan2}|"
            "does the {product} come with a warranty"
        ),
        "zh": _words(
            "{plan}怎么用|我应该买哪个{product}|{plan}多少钱|{plan}和{plan2}有什么区别|{product}有保修吗"
        ),
    },
}
# Chit-chat: the short answers first (they head the Zipf ranking), then combinations.
SHORT_EN = _words(
    "yes|okay|thank you|no|yeah|thanks|sure|hello|bye|alright|uh huh|goodbye|hi|sorry?|that's all|"
    "no thanks|yes please|great|perfect|got it|I see|hold on|one moment|pardon?|mm|right|of course|"
    "sounds good|nothing else|thank you so much"
)
SHORT_ZH = _words(
    "好的|是的|谢谢|嗯|对|不用了|你好|再见|没问题|可以|行|知道了|稍等一下|没听清|好|谢谢你|不是|没有了|明白|喂"
)
CHAT_EN = _words(
    "my name is {name}|this is {name} speaking|I'm calling from {city}|"
    "the weather is {weather} in {city} today|can you hear me {now}|"
    "sorry, I didn't catch that {now}|could you say that again {now}|{ack}, {close}|"
    "{greet}, how are you {now}|I'm fine, thanks, {close}|I'm on my way to {city}|"
    "{ack}, my name is {name}|{greet}, it's {name} again|I'm at {place} right now|sorry, {excuse}|"
    "{ack}, {excuse}|I'm {feeling} today, {close}|{greet}, is this {company}|"
    "can you speak {louder}|{ack}, I'll {later}|my {relative} told me to call|"
    "I'm calling for my {relative}|{greet}, {name} from {city}"
)
CHAT_ZH = _words(
    "我叫{name}|我是{name}|我在{city}|{city}今天天气{weather}|{now}能听到吗|{now}没听清|{ack}，{close}|{greet}，最近怎么样|"
    "我很好，{close}|我正在去{city}的路上|{ack}，我是{name}|{greet}，又是我{name}|我现在在{place}|不好意思，{excuse}|"
    "{ack}，{excuse}|我今天{feeling}，{close}|{greet}，是{company}吗|能{louder}吗|{ack}，我{later}|"
    "我{relative}让我打的|我替我{relative}打的|{greet}，我是{city}的{name}"
)
FILL_EN: dict[str, list[str]] = {
    "name": _words(
        "Anna|Ben|Carlos|Diana|Emma|Farid|Grace|Hiro|Ivan|Julia|Kofi|Lena|Mateo|Nora|Omar|Priya|"
        "Quinn|Rosa|Sam|Tara"
    ),
    "city": _words("Boston|Denver|London|Toronto|Sydney|Dublin|Austin|Seattle|Madrid|Berlin"),
    "weather": _words("lovely|terrible|really hot|rainy|cold"),
    "now": _words("now|right now|okay|at all"),
    "ack": _words("okay|yes|alright|sure|right"),
    "close": _words("thank you|that's all|bye|have a nice day|talk soon"),
    "greet": _words("hi|hello|hey|good morning|good afternoon"),
    "place": _words("home|work|the office|the airport|the supermarket|the station|the gym|the park"),
    "excuse": _words(
        "I'm driving|the line is bad|I was on the other line|the kids are shouting|"
        "I'm in a meeting|it's a bit noisy here"
    ),
    "feeling": _words("fine|good|a bit tired|very busy|great"),
    "company": _words("Acme|the help line|customer service|the front desk|Northwind"),
    "louder": _words("louder|more slowly|a bit slower|up a little"),
    "later": _words("call back later|think about it|ask my wife|ask my husband|wait|let you know"),
    "relative": _words("wife|husband|mother|father|son|daughter|friend|neighbour"),
}
FILL_ZH: dict[str, list[str]] = {
    "name": _words(
        "小王|李娜|张伟|刘洋|陈静|杨帆|赵敏|黄磊|周杰|吴芳|徐明|孙丽|马超|朱琳|胡军|郭涛|何平|高远|林青|罗兰"
    ),
    "city": _words("北京|上海|广州|深圳|杭州|成都|武汉|南京|西安|重庆"),
    "weather": _words("很好|不太好|特别热|下雨|挺冷的"),
    "now": _words("现在|喂|那个|请问"),
    "ack": _words("好的|是的|行|可以|对"),
    "close": _words("谢谢|没事了|再见|祝你愉快|回头聊"),
    "greet": _words("你好|喂|早上好|下午好|嗨"),
    "place": _words("家|公司|机场|超市|火车站|健身房|公园|学校"),
    "excuse": _words("我在开车|信号不好|刚才在接别的电话|孩子在闹|我在开会|这边有点吵"),
    "feeling": _words("挺好的|有点累|很忙|不错|心情很好"),
    "company": _words("艾克米|客服热线|客服中心|前台|北风公司"),
    "louder": _words("大点声|说慢一点|再慢一点|声音大一点"),
    "later": _words("晚点再打|考虑一下|问问我老婆|问问我老公|再看看|等会儿告诉你"),
    "relative": _words("老婆|老公|妈妈|爸爸|儿子|女儿|朋友|邻居"),
}
AGENT_REPLIES = _words(
    "Of course, let me check that for you.|Thanks for calling, how can I help?|I understand.|"
    "Is there anything else I can help with?|Sure, one moment."
)


@dataclass
class Pool:
    texts: list[str] = field(default_factory=list)  # every distinct text
    intent: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # intent -> lang -> indexes
    chitchat: dict[str, list[int]] = field(default_factory=dict)  # lang -> indexes, Zipf rank order

    def add(self, text: str) -> int:
        self.texts.append(text)
        return len(self.texts) - 1


def _expand(template: str, fills: dict[str, list[str]]) -> list[str]:
    """Every filling of ``template`` from ``fills`` (named fields; ``plan2`` differs from ``plan``)."""
    out = [template]
    for name, values in fills.items():
        if "{" + name + "}" not in template:
            continue
        out = [t.replace("{" + name + "}", v) for t in out for v in values]
    if "{plan2}" in template:
        plans = fills["plan"]
        out = [t.replace("{plan2}", p) for t in out for p in plans if p not in t]
    return out


def utterance_pool(rng: random.Random) -> Pool:
    pool = Pool()
    seen: set[str] = set()

    def take(groups: list[list[str]], n: int) -> list[int]:
        """``n`` texts spread evenly over the templates (``groups``: one list of fillings each),
        so a template with many fillings does not crowd out the others."""
        fresh = [[c for c in dict.fromkeys(group) if normalised(c) not in seen] for group in groups]
        for group in fresh:
            rng.shuffle(group)
        chosen: list[str] = []
        while len(chosen) < n and any(fresh):
            for group in fresh:
                while group and len(chosen) < n:
                    text = group.pop()
                    if normalised(text) not in seen:
                        seen.add(normalised(text))
                        chosen.append(text)
                        break
        return [pool.add(text) for text in chosen]

    fills = {
        "en": dict(item=ITEMS_EN, plan=PLANS_EN, product=PRODUCTS_EN, day=DAYS_EN, when=WHEN_EN, who=WHO_EN),
        "zh": dict(item=ITEMS_ZH, plan=PLANS_ZH, product=PRODUCTS_ZH, day=DAYS_ZH, when=WHEN_ZH, who=WHO_ZH),
    }
    affixes = {"en": (PRE_EN, POST_EN), "zh": (PRE_ZH, POST_ZH)}
    for intent, by_language in INTENT_TEMPLATES.items():
        pool.intent[intent] = {}
        for lang, templates in by_language.items():
            pre, post = affixes[lang]
            groups = [
                [p + body + s for body in _expand(t, fills[lang]) for p in pre for s in post]
                for t in templates
            ]
            pool.intent[intent][lang] = take(groups, PER_INTENT_LANGUAGE)
    for lang, short, chat, chat_fills in (
        ("en", SHORT_EN, CHAT_EN, FILL_EN),
        ("zh", SHORT_ZH, CHAT_ZH, FILL_ZH),
    ):
        head = [pool.add(text) for text in short]
        seen.update(normalised(text) for text in short)
        groups = [_expand(t, chat_fills) for t in chat]
        pool.chitchat[lang] = head + take(groups, CHITCHAT[lang] - len(head))
    return pool


# -- the synthetic store ----------------------------------------------------------------------------


@dataclass
class Population:
    users: int
    calls: int
    turns: int
    askers: int
    planted: set[tuple[str, str]]  # (user, intent) pairs said at least once
    intent_turns: int
    live_users: int
    distinct_texts: int
    top10_share: float  # of all turns, the ten most frequent texts


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores DateTime on SQLite


def populate(path: Path, pool: Pool, now: datetime) -> Population:
    """Bulk-insert users, calls, turns and live sessions with the sqlite3 module, a few
    transactions, ``executemany``: ~10x faster than the ORM, and this is setup, not the run."""
    rng = np.random.default_rng(SEED)
    english = rng.random(USERS) < ENGLISH_SHARE
    user_ids = [f"user-{n:06d}" for n in range(USERS)]
    calls_of = 1 + rng.multinomial(CALLS - USERS, np.full(USERS, 1 / USERS))
    call_user = rng.permutation(np.repeat(np.arange(USERS), calls_of))  # calls in start order
    starts = np.sort(rng.uniform(0, DAYS * 86400, size=CALLS))
    turns_of = 1 + rng.multinomial(TURNS - CALLS, np.full(CALLS, 1 / CALLS))
    turn_call = np.repeat(np.arange(CALLS), turns_of)
    turn_user = call_user[turn_call]

    # Chit-chat everywhere, Zipf-ranked per language ...
    text = np.empty(TURNS, dtype=np.int64)
    turn_english = english[turn_user]
    for lang, mask in (("en", turn_english), ("zh", ~turn_english)):
        ranks = np.asarray(pool.chitchat[lang])
        weights = 1.0 / np.arange(1, len(ranks) + 1) ** ZIPF_S
        text[mask] = ranks[rng.choice(len(ranks), size=int(mask.sum()), p=weights / weights.sum())]
    # ... then the askers' requests, in turns of their own.
    by_user = np.argsort(turn_user, kind="stable")
    first = np.concatenate([[0], np.cumsum(np.bincount(turn_user, minlength=USERS))])
    names = list(pool.intent)
    askers = rng.choice(USERS, size=int(USERS * ASKER_SHARE), replace=False)
    planted: set[tuple[str, str]] = set()
    intent_turns = 0
    for user in askers:
        lang = "en" if english[user] else "zh"
        turns = by_user[first[user] : first[user + 1]]
        wants = [names[rng.integers(len(names))]]
        if rng.random() < REPEAT_SHARE:
            wants.append(wants[0])
        if rng.random() < SECOND_INTENT_SHARE:
            wants.append(str(rng.choice([n for n in names if n != wants[0]])))
        for intent, turn in zip(wants, rng.permutation(turns), strict=False):
            choices = pool.intent[intent][lang]
            text[turn] = choices[rng.integers(len(choices))]
            planted.add((user_ids[user], intent))
            intent_turns += 1
    live = rng.choice(USERS, size=max(1, int(USERS * LIVE_SHARE)), replace=False)

    base = now - timedelta(days=DAYS + 1)
    call_ids = [uuid.UUID(bytes=rng.bytes(16), version=4).hex for _ in range(CALLS)]
    call_start = [base + timedelta(seconds=float(s)) for s in starts]
    turn_index = np.arange(TURNS) - np.repeat(np.cumsum(turns_of) - turns_of, turns_of) + 1
    no_item = rng.random(USERS) < NO_ITEM_SHARE

    def user_rows() -> Iterator[tuple[Any, ...]]:
        created = _stamp(base)
        for n, user_id in enumerate(user_ids):
            item = ITEMS_EN[n % len(ITEMS_EN)] if english[n] else ITEMS_ZH[n % len(ITEMS_ZH)]
            attributes = {} if no_item[n] else {"item": item}
            name = FILL_EN["name"][n % 20] if english[n] else FILL_ZH["name"][n % 20]
            yield user_id, name, json.dumps(attributes), created, created

    def call_rows() -> Iterator[tuple[Any, ...]]:
        for c in range(CALLS):
            ended = call_start[c] + timedelta(seconds=20 * int(turns_of[c]) + 5)
            yield (
                call_ids[c],
                user_ids[call_user[c]],
                NODES[c % len(NODES)],
                _stamp(call_start[c]),
                _stamp(ended),
                "hangup",
            )

    def turn_rows() -> Iterator[tuple[Any, ...]]:
        texts = pool.texts
        for t in range(TURNS):
            c = turn_call[t]
            index = int(turn_index[t])
            started = call_start[c] + timedelta(seconds=20 * (index - 1))
            reply = AGENT_REPLIES[t % len(AGENT_REPLIES)]
            yield (
                call_ids[c],
                index,
                _stamp(started),
                _stamp(started + timedelta(seconds=12)),
                texts[text[t]],
                reply,
                reply,
                0,
                "user",
            )

    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        with connection:
            connection.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", user_rows())
            connection.executemany(
                "INSERT INTO calls (id, user_id, node_id, started_at, ended_at, end_reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                call_rows(),
            )
        with connection:
            connection.executemany(
                'INSERT INTO turns (call_id, "index", started_at, ended_at, user_text, agent_text, '
                "agent_text_heard, interrupted, initiator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                turn_rows(),
            )
        with connection:
            stamp = _stamp(now)
            connection.executemany(
                "INSERT INTO live_sessions (call_id, user_id, node_id, started_at, heartbeat_at, "
                "last_activity_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (uuid.uuid4().hex, user_ids[u], NODES[i % len(NODES)], stamp, stamp, stamp)
                    for i, u in enumerate(live)
                ],
            )
    finally:
        connection.close()
    counts = np.bincount(text, minlength=len(pool.texts))
    return Population(
        users=USERS,
        calls=CALLS,
        turns=TURNS,
        askers=len(askers),
        planted=planted,
        intent_turns=intent_turns,
        live_users=len(live),
        distinct_texts=int((counts > 0).sum()),
        top10_share=float(np.sort(counts)[-10:].sum() / TURNS),
    )


# -- the run, with its phases timed -----------------------------------------------------------------
