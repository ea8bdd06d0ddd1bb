"""The knowledge index as the ingestor and a call use it: Milvus Lite (the embedded default) with
the e5 engine, its background flush at its production settings, over the shipped documents and
questions (tests/fixtures/knowledge: 11 documents, 42 questions, half English, half Chinese) at
the default chunking, among filler chunks. About 8 minutes on the 2-core box.

- ingestion: chunks per second through e5 and the index (BASES filler chunks, as long as the
  default chunking makes them);
- recall@5 and hit@1 of each search mode, per language, with the shipped documents
  settled among 10,000 chunks, and (hybrid) again right after each had been changed;
- freshness: a new version of a shipped document, with a sentence of its own, through the
  Ingestor (read, parse, chunk, e5, index, store state) until a search for that sentence returns
  the new chunk and no chunk of the old version; the index holds ~10,000 chunks. The hop over
  the event bus before it is measured by the events suite (``knowledge.changed`` delivery);
- hybrid query latency at 10,000 and 100,000 chunks, once the index has flushed (what a call
  meets almost always), and right after a burst of writes (1,000 rows of changed documents).

Filler: embedding 100,000 chunks with e5 would take hours here, so BASES filler texts are embedded
for real (which is the ingestion measurement) and every filler chunk is one of them with its own
numbers, with the base's vector plus a small random offset (cosine ~0.97 to it), normalised:
vectors where texts like it would be, at no cost. The filler is hotel material on other topics
(wine lists, rooms, job offers, local tips, terms...), in both languages, none answering a question.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.results import Metric, metric, percentile
from voiceagent.config import StoreSettings
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events.envelope import KnowledgeChangedEvent, KnowledgeChangedPayload
from voiceagent.knowledge.chunking import ChunkingSettings, chunk_text
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.index import Chunk, SearchMode
from voiceagent.knowledge.ingest import Ingestor
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings
from voiceagent.knowledge.parsing import parse_document
from voiceagent.store.database import Database

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "knowledge"
BASES = 400  # filler texts embedded for real: ~1 min of e5
SCALES = (10_000, 100_000)
FILLER_DOCUMENT = 1000  # filler rows per document (the bulk load writes 1,000 rows at a time)
BURST_DOCUMENTS = 1  # filler documents replaced at once for the after-a-burst latency
SEARCHES = 60
AFTER_BURST_SEARCHES = 20
FRESHNESS_SAMPLES = 20
FRESHNESS_GIVE_UP_S = 10.0
LIMIT = 5
MODES: tuple[SearchMode, ...] = ("dense", "sparse", "hybrid")


# -- the shipped documents and questions -------------------------------------------------------


@cache
def shipped_documents() -> dict[str, tuple[str, list[str]]]:
    """doc id (file stem) -> (title, chunks at the default chunking)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for path in sorted((FIXTURES / "docs").iterdir()):
        document = parse_document(path.read_bytes(), filename=path.name)
        out[path.stem] = (document.title, chunk_text(document.text))
    return out


@cache
def shipped_questions() -> list[dict[str, Any]]:
    """``{question, doc, expect, ...}``: the chunk that answers is in ``doc`` and contains ``expect``."""
    questions: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "questions.yaml").read_text())
    return questions


def is_english(question: str) -> bool:
    return question.isascii()


# -- filler: other chunks of the same kind of knowledge base, none answering a question ---------

# Words are drawn once per base text (its topic); numbers are drawn again for every copy of it.
_WORDS: dict[str, list[str]] = {
    "wine": ["Barolo Cannubi", "Riesling Kabinett", "Grüner Veltliner", "Chianti Classico", "Rioja Reserva",
             "Sancerre", "Etna Rosso", "Blaufränkisch", "Spätburgunder", "Vermentino"],
    "region": ["Piedmont", "the Mosel valley", "the Wachau", "Tuscany", "Rioja Alta", "the Loire",
               "Sicily", "Burgenland", "Baden", "Sardinia"],
    "style": ["dry white", "light red", "full-bodied red", "crisp white", "mineral white", "fruity red"],
    "grape": ["Nebbiolo", "Riesling", "Sangiovese", "Tempranillo", "Sauvignon Blanc", "Pinot Noir",
              "Nerello Mascalese", "Chardonnay"],
    "note": ["cherry", "green apple", "pepper", "lemon peel", "violets", "smoke", "peach", "tobacco",
             "wild herbs", "plum"],
    "dish": ["risotto with mushrooms", "grilled sea bass", "veal saltimbocca", "beetroot salad",
             "lamb shoulder", "ricotta ravioli", "duck breast with figs", "asparagus soup"],
    "sight": ["the Museum of Natural History", "the TV tower", "Mauerpark flea market",
              "the Botanical Garden", "the Jewish Museum", "the zoo", "Tempelhof Field",
              "the Pergamon panorama", "Treptower Park", "the Gallery of Photography"],
    "transport": ["tram", "bicycle", "underground", "bus", "foot"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    "role": ["night receptionist", "sous chef", "housekeeping supervisor", "event manager",
             "sommelier", "spa therapist", "maintenance technician", "breakfast host"],
    "dept": ["front office", "kitchen", "housekeeping", "events", "spa", "technical services"],
    "shift": ["early shifts", "late shifts", "weekends", "night shifts"],
    "skill": ["Opera PMS", "Italian cooking", "wine service", "event planning", "massage techniques",
              "heating systems"],
    "perk": ["a public transport ticket", "staff rates in our hotels", "a yearly training budget",
             "a company bicycle"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "September",
              "October", "November"],
    "event": ["Wine tasting", "Cooking class", "Book reading", "Cocktail workshop",
              "Photography walk", "Cheese tasting", "Family quiz afternoon", "Chocolate workshop"],
    "room": ["Library", "Orangery", "Courtyard Room", "Attic Lounge", "Rose Room", "Garden Hall"],
    "incl": ["a glass of sparkling wine", "dinner", "all ingredients", "coffee and cake",
             "a printed booklet", "snacks"],
    "ingredient": ["shallots", "fresh thyme", "butter", "arborio rice", "parmesan", "white beans",
                   "lemons", "pancetta", "spinach", "walnuts"],
    "spice": ["black pepper", "nutmeg", "chilli flakes", "fennel seeds", "smoked paprika"],
    "news": ["the roof terrace reopened after its renovation",
             "all rooms on the third floor got new bathrooms", "our kitchen installed a new wood-fired oven",
             "the courtyard was replanted with old apple trees",
             "solar panels were installed on the east wing", "the lobby got new furniture made in Saxony"],
    "name": ["Lena Hoffmann", "Tomasz Nowak", "Giulia Romano", "Jonas Becker", "Aylin Demir",
             "Pierre Laurent", "Sofia Lindqvist", "Mateo García", "Hannah Schulz", "Kenji Sato"],
    "place": ["country inn", "beach hotel", "conference hotel", "cruise ship", "ski lodge", "city hostel"],
    "city": ["Hamburg", "Vienna", "Lisbon", "Munich", "Copenhagen", "Zurich", "Prague", "Lyon"],
    "roomtype": ["superior double", "junior suite", "classic single", "family room", "studio",
                 "deluxe twin"],
    "floor": ["second", "third", "fourth", "fifth", "top"],
    "bed": ["a king-size bed", "two single beds", "a queen-size bed and a sofa bed", "a French bed"],
    "view": ["courtyard", "chestnut trees", "rooftops of Prenzlauer Berg", "church tower", "garden"],
    "feature": ["a balcony", "a rain shower", "a bathtub", "a coffee machine", "a writing desk",
                "blackout curtains", "a minibar", "air conditioning", "a reading chair"],
    "clause": ["The hotel is liable for items lost from rooms only up to the legal limits.",
               "Guests must pay for damage they cause to rooms or furniture.",
               "Invoices are payable in euros; other currencies are accepted at the daily rate.",
               "Personal data is processed only to fulfil the contract and as the law requires.",
               "Neither party is liable for failures caused by events beyond its control.",
               "Complaints about the invoice must state the invoice number and the reason."],
    "thing": ["roof terrace", "quiet room", "breakfast eggs", "bicycle tour", "reading corner",
              "welcome drink"],
    "issue": ["lift was out of order on your second day", "room was warm at night",
              "coffee machine in the lobby was broken", "check-out queue was long",
              "street noise woke you up"],
    "resource": ["electricity", "water", "paper", "plastic", "heating oil"],
    "measure": ["We replaced all lamps with LEDs and installed motion sensors in the corridors.",
                "We stopped using single-use bottles and installed water taps on every floor.",
                "We buy vegetables from farms within 100 kilometres and compost kitchen waste.",
                "We switched the laundry to cold-water washing and line drying in summer."],
    # Chinese
    "wine_zh": ["巴罗洛", "雷司令", "绿维特利纳", "经典基安蒂", "里奥哈珍藏", "桑塞尔", "埃特纳红", "黑皮诺"],
    "region_zh": ["皮埃蒙特", "摩泽尔河谷", "瓦豪", "托斯卡纳", "里奥哈", "卢瓦尔河谷", "西西里", "巴登"],
    "grape_zh": ["内比奥罗", "雷司令", "桑娇维塞", "丹魄", "长相思", "黑皮诺", "霞多丽"],
    "note_zh": ["樱桃", "青苹果", "胡椒", "柠檬皮", "紫罗兰", "烟熏", "桃子", "烟草", "野生香草", "李子"],
    "dish_zh": ["蘑菇烩饭", "烤鲈鱼", "小牛肉卷", "甜菜沙拉", "慢烤羊肩", "意式饺子", "无花果鸭胸", "芦笋汤"],
    "sight_zh": ["自然历史博物馆", "电视塔", "墙公园跳蚤市场", "植物园", "犹太博物馆", "动物园",
                 "滕珀尔霍夫公园", "特雷普托公园", "摄影画廊"],
    "transport_zh": ["坐电车", "骑自行车", "坐地铁", "坐公交车", "步行"],
    "weekday_zh": ["一", "二", "三", "四", "五"],
    "role_zh": ["夜班前台", "副厨师长", "客房主管", "活动经理", "侍酒师", "理疗师", "维修技工", "早餐领班"],
    "dept_zh": ["前厅部", "厨房", "客房部", "活动部", "水疗部", "工程部"],
    "shift_zh": ["早班", "晚班", "周末班", "夜班"],
    "skill_zh": ["酒店管理系统", "意大利菜", "葡萄酒服务", "活动策划", "按摩手法", "供暖系统维修"],
    "perk_zh": ["交通补贴", "员工住宿优惠", "每年的培训经费", "公司自行车"],
    "month_zh": ["1月", "2月", "3月", "4月", "5月", "6月", "7月", "9月", "10月", "11月"],
    "event_zh": ["品酒会", "烹饪课", "读书会", "鸡尾酒工作坊", "摄影散步", "奶酪品鉴", "家庭知识竞赛",
                 "巧克力工作坊"],
    "room_zh": ["图书室", "橘园厅", "庭院厅", "阁楼酒廊", "玫瑰厅", "花园厅"],
    "incl_zh": ["一杯起泡酒", "晚餐", "全部材料", "咖啡和蛋糕", "一本印刷手册", "小吃"],
    "ingredient_zh": ["红葱头", "新鲜百里香", "黄油", "意大利米", "帕尔玛奶酪", "白芸豆", "柠檬", "培根",
                      "菠菜", "核桃"],
    "spice_zh": ["黑胡椒", "肉豆蔻", "辣椒碎", "茴香籽", "烟熏红椒粉"],
    "news_zh": ["屋顶露台装修后重新开放", "三楼所有房间换了新浴室", "厨房安装了新的柴火烤炉",
                "庭院里重新种上了老苹果树", "东楼屋顶安装了太阳能板", "大堂换上了萨克森制作的新家具"],
    "name_zh": ["王丽娜", "张伟", "李晓燕", "陈杰", "刘芳", "赵明", "孙悦", "周强"],
    "place_zh": ["乡村旅馆", "海滨酒店", "会议酒店", "邮轮", "滑雪度假村", "青年旅舍"],
    "city_zh": ["汉堡", "维也纳", "里斯本", "慕尼黑", "哥本哈根", "苏黎世", "布拉格", "里昂"],
    "roomtype_zh": ["高级大床房", "小套房", "标准单人房", "家庭房", "开放式客房", "豪华双床房"],
    "floor_zh": ["二", "三", "四", "五", "六"],
    "bed_zh": ["一张特大床", "两张单人床", "一张大床和一张沙发床", "一张法式双人床"],
    "view_zh": ["庭院", "栗子树", "普伦茨劳尔贝格的屋顶", "教堂的钟楼", "花园"],
    "feature_zh": ["阳台", "雨淋花洒", "浴缸", "咖啡机", "书桌", "遮光窗帘", "迷你吧", "空调", "阅读椅"],
    "clause_zh": ["客人放在房间里的物品丢失，酒店只在法律规定的范围内承担责任。",
                  "客人对房间或者家具造成的损坏需要照价赔偿。",
                  "账单以欧元支付，其他货币按当天的汇率收取。",
                  "个人资料只用于履行合同和法律要求的用途。",
                  "因不可抗力造成的违约，双方都不承担责任。",
                  "对账单有异议的，请写明账单号码和理由。"],
    "thing_zh": ["屋顶露台", "安静的房间", "早餐的鸡蛋", "自行车游", "阅读角", "欢迎饮品"],
    "issue_zh": ["第二天电梯出了故障", "晚上房间太热", "大堂的咖啡机坏了", "退房时排队太久",
                 "街上的噪音吵醒了您"],
    "resource_zh": ["电", "水", "纸张", "塑料", "取暖油"],
    "measure_zh": ["我们把所有的灯都换成了LED灯，并在走廊安装了感应开关。",
                   "我们不再使用一次性瓶装水，每层楼都安装了饮水机。",
                   "我们从一百公里以内的农场采购蔬菜，厨房垃圾全部堆肥。",
                   "洗衣房改用冷水洗涤，夏天用自然晾干。"],
}  # fmt: skip
_NUMBERS: dict[str, tuple[int, int]] = {
    "price": (5, 90), "bigprice": (60, 900), "year": (2012, 2024), "year2": (2005, 2011),
    "year3": (2026, 2032), "count": (8, 60), "count2": (6, 24), "minutes": (5, 45), "open": (8, 11),
    "close": (17, 22), "age": (6, 14), "pct": (5, 30), "pct2": (5, 20), "hours": (20, 40),
    "days": (14, 30), "num": (1, 99), "day": (1, 28), "grams": (100, 500), "rest": (2, 10),
    "weeks": (3, 20), "years": (2, 15), "roomno": (101, 512), "size": (18, 90), "guests": (2, 5),
    "section": (1, 24), "nights": (1, 9), "litres": (20, 90), "zhe": (8, 9),
}  # fmt: skip
_TEMPLATES = [
    "{wine} from {region}, vintage {year}. A {style} made from {grape}, with notes of {note} and {note2}. "
    "We serve it by the glass for {price} euros or by the bottle for {bigprice} euros, and it goes well with "
    "our {dish}. Only {count} bottles of this vintage are left in the cellar, so ask your waiter before you "
    "order it for a large table.",
    "Tip for guests: {sight} is {minutes} minutes away by {transport}. It is open from {open}:00 to "
    "{close}:00 except on {weekday}s, and tickets cost {price} euros; children under {age} go in free. "
    "The front desk sells tickets with a discount of {pct} percent, and the queue at the entrance is "
    "shortest before {open}:30 in the morning.",
    "We are hiring: a {role} for our {dept} team, {hours} hours a week, starting in {month}. You will work "
    "mostly {shift}, and experience with {skill} is an advantage. We offer {perk}, {days} days of paid "
    "holiday and free meals during your shift. Send your CV and a short letter to "
    "jobs{num}@lindenhof.example, and tell us when you could start.",
    "{event} on {weekday} {day} {month} in the {room}. Doors open at {close}:00, and the evening lasts about "
    "two hours. Tickets cost {price} euros, including {incl}. Places are limited to {count} "
    "guests, so please book at the front desk or by email; guests staying with us get {pct} percent off.",
    "Recipe from our kitchen: {dish}. For {count2} people you need {ingredient}, {ingredient2}, {grams} "
    "grams of {ingredient3} and a little olive oil. Cook it for {minutes} minutes over a low heat, season "
    "with salt and {spice}, and let it rest for {rest} minutes before serving. Our chef recommends a "
    "glass of {grape} with it.",
    "News from {month} {year}: {news}. The work took {weeks} weeks and cost {bigprice} thousand euros. "
    "{name}, our {role}, says that guests have noticed the difference and that the first reviews have been "
    "very good. We thank our neighbours for their patience during the building work.",
    "Meet the team: {name} joined us in {year} as {role}, after {years} years at a {place} in {city}. "
    "Ask {name} for a recommendation any time: the favourite dish on our menu is the {dish}, and the "
    "favourite afternoon out is a visit to {sight}, {minutes} minutes away by {transport}.",
    "Room {roomno} is a {roomtype} on the {floor} floor, {size} square metres, with {bed} and a view of the "
    "{view}. It has {feature} and {feature2}. The room sleeps up to {guests} people; an extra bed costs "
    "{price} euros per night, and a baby cot is free of charge.",
    "Terms of business, section {section}. {clause} Claims under this section must be made in writing within "
    "{days} days. If any part of these terms is found invalid, the rest remains in force. These terms were "
    "last updated in {month} {year}.",
    "Reply to a review from {month}: Dear {name}, thank you for staying with us for {nights} nights. We are "
    "glad you enjoyed the {thing}, and we are sorry that the {issue}. We have passed your comment to our "
    "{dept} team, and we hope to welcome you back soon.",
    "Sustainability report: in {year} we used {pct} percent less {resource} than in {year2}. {measure} Our "
    "goal is another {pct2} percent by {year3}, and every guest who skips room cleaning for a day saves "
    "about {litres} litres of water.",
    "The {room} meeting room measures {size} square metres and seats {count} people in rows or {count2} "
    "around a board table. It has {feature}, daylight and its own coffee station. A half day costs "
    "{bigprice} euros and a full day twice that, including water and notepads.",
    "{wine_zh}，产自{region_zh}，{year}年份。这款酒用{grape_zh}酿造，带有{note_zh}和{note2_zh}的香气。单杯{price}元，"
    "整瓶{bigprice}元，适合搭配我们的{dish_zh}。这个年份的酒在酒窖里只剩下{count}瓶，人多的桌子点之前请先问服务员。",
    "住客小贴士：{sight_zh}离酒店{minutes}分钟，可以{transport_zh}前往。开放时间是{open}点到{close}点，每周{weekday_zh}"
    "闭馆，门票{price}元，{age}岁以下儿童免费。在前台买票可以便宜百分之{pct}，早上{open}点半以前排队的人最少。",
    "招聘信息：{dept_zh}招聘{role_zh}一名，每周工作{hours}小时，{month_zh}入职。主要上{shift_zh}，有{skill_zh}经验的"
    "优先。我们提供{perk_zh}、每年{days}天带薪假期和工作餐。请把简历发到jobs{num}@lindenhof.example，并写明可以入职的时间。",
    "{event_zh}将在{month_zh}{day}日星期{weekday_zh}在{room_zh}举行，{close}点入场，大约两个小时后结束。门票{price}元，"
    "包括{incl_zh}。名额只有{count}个，请在前台或者通过邮件报名，住客可以享受{zhe}折优惠。",
    "厨房食谱：{dish_zh}。{count2}个人的分量需要{ingredient_zh}、{ingredient2_zh}、{grams}克{ingredient3_zh}和少许橄榄油。"
    "小火煮{minutes}分钟，加盐和{spice_zh}调味，出锅前静置{rest}分钟。厨师推荐搭配一杯{grape_zh}。",
    "{year}年{month_zh}的新闻：{news_zh}。工程用了{weeks}个星期，花费{bigprice}万元。我们的{role_zh}{name_zh}说，"
    "客人们已经注意到了变化，最早的评价都很好。感谢邻居们在施工期间的耐心和理解。",
    "认识我们的团队：{name_zh}在{year}年加入我们，担任{role_zh}。在这之前，{name_zh}在{city_zh}的一家{place_zh}工作了"
    "{years}年。想听推荐可以问{name_zh}：最喜欢的菜是{dish_zh}，最喜欢的下午活动是去{sight_zh}，{transport_zh}{minutes}分钟就到。",
    "{roomno}号房是一间{roomtype_zh}，在{floor_zh}楼，面积{size}平方米，有{bed_zh}，可以看到{view_zh}。房间里有"
    "{feature_zh}和{feature2_zh}，最多可以住{guests}人；加床每晚{price}元，婴儿床免费。",
    "服务条款第{section}条：{clause_zh}根据本条提出的要求，必须在{days}天内以书面形式提出。如果本条款的某一部分无效，"
    "其余部分仍然有效。本条款最近一次更新是在{year}年{month_zh}。",
    "回复{month_zh}的点评：亲爱的{name_zh}，感谢您在我们这里住了{nights}晚。很高兴您喜欢{thing_zh}，对于{issue_zh}，"
    "我们深表歉意。我们已经把您的意见转给了{dept_zh}，希望很快再次见到您。",
    "环保报告：{year}年我们的{resource_zh}用量比{year2}年减少了百分之{pct}。{measure_zh}我们的目标是到{year3}年再减少"
    "百分之{pct2}。每位客人选择一天不打扫房间，大约可以节约{litres}升水。",
    "{room_zh}会议室面积{size}平方米，排成剧院式可以坐{count}人，会议桌式可以坐{count2}人。会议室有{feature_zh}、"
    "自然采光和独立的咖啡台。半天租金{bigprice}元，全天翻倍，包括饮用水和便签本。",
]
_SLOT = re.compile(r"\{(\w+)\}")


def filler_text(row: int, bases: int = BASES) -> str:
    """Filler row ``row``: base text ``row % bases`` (entries of one kind, a wine list, rooms, job
    offers..., as much as fits in a chunk of the default size) with numbers of its own."""
    base, copy = row % bases, row // bases
    template = _TEMPLATES[base % len(_TEMPLATES)]
    glue, limit = (" " if template.isascii() else ""), ChunkingSettings().max_chars
    text = chunk_text(_render(template, f"{base}-0", f"{base}-{copy}-0"))[0]
    for i in (1, 2):
        more = text + glue + _render(template, f"{base}-{i}", f"{base}-{copy}-{i}")
        if len(more) > limit:
            break
        text = more
    return text


def _render(template: str, words_seed: str, numbers_seed: str) -> str:
    words = random.Random(words_seed)
    numbers = random.Random(numbers_seed)
    drawn: dict[str, str] = {}

    def fill(match: re.Match[str]) -> str:
        slot = match.group(1)
        if slot not in drawn:
            if slot in _NUMBERS:
                drawn[slot] = str(numbers.randint(*_NUMBERS[slot]))
            else:
                options = [w for w in _WORDS[re.sub(r"\d", "", slot)] if w not in drawn.values()]
                drawn[slot] = words.choice(options)
        return drawn[slot]

    return _SLOT.sub(fill, template)


def filler_vectors(bases: np.ndarray, first: int, count: int, noise: float = 0.25) -> np.ndarray:
    """Vectors of filler rows ``first ...``: each its base's plus a random offset of length
    ~``noise`` (cosine ~0.97 to the base), normalised."""
    rows = bases[(first + np.arange(count)) % len(bases)]
    offsets = np.random.default_rng(first).standard_normal(rows.shape).astype(np.float32)
    out = rows + offsets * (noise / np.sqrt(rows.shape[1]))
    normalised: np.ndarray = out / np.linalg.norm(out, axis=1, keepdims=True)
    return normalised.astype(np.float32)


# -- the run -------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"bench knowledge: {time.strftime('%H:%M:%S')} {message}", flush=True)


async def _run() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    e5 = E5Embeddings()
    with tempfile.TemporaryDirectory(prefix="bench-kb-") as name:
        folder = Path(name)
        database = Database(StoreSettings(url=f"sqlite+aiosqlite:///{folder / 'store.db'}"))
        await database.migrate()
        index = await MilvusIndex.open(MilvusSettings(uri=str(folder / "milvus.db")), e5.dimensions)
        try:
            ingestor = Ingestor(index, e5, DocumentStates(database))
            _say("shipping the documents")
            sources = await _ship(ingestor, folder / "docs")
            _say("embedding the filler's bases")
            bases = await _ingestion(out, index, e5)
            _say(f"filling to {SCALES[0]:,}")
            await _fill(index, bases, 0, SCALES[0])
            await _settle(index)
            questions = await _embedded_questions(e5)
            where = f"the 11 shipped documents settled among {SCALES[0]:,} chunks"
            _say("recall and latency")
            await _recall(out, index, questions, MODES, "", where)
            await _latency(out, index, questions, bases, SCALES[0])
            _say("freshness")
            await _freshness(out, ingestor, sources)
            where = f"right after each shipped document was changed (a sentence added), among {SCALES[0]:,}"
            await _recall(out, index, questions, ("hybrid",), "_recent", where)
            _say(f"filling to {SCALES[1]:,}")
            await _fill(index, bases, SCALES[0], SCALES[1])
            await _settle(index)
            _say("latency")
            await _latency(out, index, questions, bases, SCALES[1])
            _say("done")
        finally:
            await index.close()
            await database.close()
            e5.close()
    return out


def _changed(doc_id: str, source: Path, data: bytes) -> KnowledgeChangedEvent:
    checksum = hashlib.sha256(data).hexdigest()[:32]
    payload = KnowledgeChangedPayload(
        document_id=doc_id, change="updated", source=str(source), checksum=checksum
    )
    return KnowledgeChangedEvent(idempotency_key=f"knowledge:{doc_id}:{checksum}", payload=payload)


async def _ship(ingestor: Ingestor, folder: Path) -> dict[str, Path]:
    """The shipped documents as files of their own, ingested as the node would."""
    sources = _copy_documents(folder)
    for doc_id, source in sources.items():
        await ingestor.handle(_changed(doc_id, source, _read(source)))
    return sources


def _copy_documents(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    sources: dict[str, Path] = {}
    for path in sorted((FIXTURES / "docs").iterdir()):
        sources[path.stem] = folder / path.name
        sources[path.stem].write_bytes(path.read_bytes())
    return sources


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


async def _ingestion(out: dict[str, Metric], index: MilvusIndex, e5: E5Embeddings) -> np.ndarray:
    """The BASES filler texts through e5 and the index, as documents of 10 chunks; their vectors
    are the filler's."""
    texts = [filler_text(row) for row in range(BASES)]
    parts: list[np.ndarray] = []
    started = time.perf_counter()
    for first in range(0, BASES, 10):
        batch = texts[first : first + 10]
        vectors = await e5.embed_passages(batch)
        chunks = [Chunk(doc_id=f"base-{first}", version="v1", ordinal=i, text=t) for i, t in enumerate(batch)]
        await index.replace_document(chunks, vectors)
        parts.append(vectors)
    elapsed = time.perf_counter() - started
    out["knowledge_ingest_chunks_per_s"] = metric(
        BASES / elapsed,
        "chunks/s",
        ">= 3",
        f"{BASES} chunks of ~{statistics.mean(len(t) for t in texts):.0f} characters (English and Chinese), "
        "e5 (batches of 16, 1 thread) + Milvus Lite, documents of 10 chunks",
    )
    return np.vstack(parts)


async def _fill(index: MilvusIndex, bases: np.ndarray, start: int, stop: int, version: str = "v1") -> None:
    """Filler rows ``start ... stop - 1``, written as documents of FILLER_DOCUMENT rows."""
    for first in range(start, stop, FILLER_DOCUMENT):
        count = min(FILLER_DOCUMENT, stop - first)
        doc_id = f"filler-{first // FILLER_DOCUMENT}"
        chunks = [
            Chunk(doc_id=doc_id, version=version, ordinal=i, text=filler_text(first + i, len(bases)))
            for i in range(count)
        ]
        await index.replace_document(chunks, filler_vectors(bases, first, count))


async def _settle(index: MilvusIndex) -> None:
    """Until the index has flushed what was written, on its own (flush_after_s at most), and
    Milvus Lite's compaction after it is likely done."""
    async with asyncio.timeout(index.settings.flush_after_s + 30):
        while index.unflushed:  # noqa: ASYNC110 (the index's own state: nothing to wait on)
            await asyncio.sleep(0.1)
    await asyncio.sleep(3)


async def _embedded_questions(e5: E5Embeddings) -> list[tuple[dict[str, Any], np.ndarray]]:
    questions = shipped_questions()
    vectors = await e5.embed_queries([q["question"] for q in questions])
    return list(zip(questions, vectors, strict=True))


async def _recall(
    out: dict[str, Metric],
    index: MilvusIndex,
    questions: list[tuple[dict[str, Any], np.ndarray]],
    modes: tuple[SearchMode, ...],
    suffix: str,
    where: str,
) -> None:
    for mode in modes:
        for language in ("en", "zh"):
            asked = [(q, v) for q, v in questions if is_english(q["question"]) == (language == "en")]
            found = first = 0
            for question, vector in asked:
                hits = await index.search(question["question"], vector, limit=LIMIT, mode=mode)
                right = [h.doc_id == question["doc"] and question["expect"] in h.text for h in hits]
                found += any(right)
                first += bool(right and right[0])
            note = f"{len(asked)} {'English' if language == 'en' else 'Chinese'} questions; {where}"
            side = {"dense": "e5 vectors alone", "sparse": "BM25 (jieba) alone", "hybrid": "hybrid (RRF)"}[
                mode
            ]
            goal = ">= 0.9" if mode == "hybrid" else "info"
            out[f"knowledge_recall_at_5_{mode}{suffix}_{language}"] = metric(
                found / len(asked), "ratio", goal, f"{side}: the answering chunk in the top 5; {note}"
            )
            if not suffix:
                out[f"knowledge_hit_at_1_{mode}_{language}"] = metric(
                    first / len(asked),
                    "ratio",
                    ">= 0.8" if mode == "hybrid" else "info",
                    f"{side}: the answering chunk first; {note}",
                )


async def _timed(samples: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    times: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        await call(i)
        times.append(time.perf_counter() - started)
    return times


async def _latency(
    out: dict[str, Metric],
    index: MilvusIndex,
    questions: list[tuple[dict[str, Any], np.ndarray]],
    bases: np.ndarray,
    scale: int,
) -> None:
    async def ask(i: int) -> object:
        question, vector = questions[i % len(questions)]
        return await index.search(question["question"], vector, limit=LIMIT)

    key, size = f"knowledge_hybrid_query_{scale // 1000}k", f"{scale:,} chunks"
    settled = await _timed(SEARCHES, ask)
    note = (
        f"{size}, flushed by the index; top {LIMIT} of each side's {2 * LIMIT} by RRF; {SEARCHES} questions"
    )
    out[f"{key}_p50_s"] = metric(percentile(settled, 50), "s", "< 0.05", note)
    out[f"{key}_p95_s"] = metric(percentile(settled, 95), "s", "< 0.1", f"{note}; max {max(settled):.3f} s")
    # A burst: BURST_DOCUMENTS filler documents replaced by new versions, then questions at once
    # (they wait for the flush the burst sets off, on the index's one worker).
    flushes = index.flushes
    first = scale - BURST_DOCUMENTS * FILLER_DOCUMENT
    await _fill(index, bases, first, scale, version="v2")
    burst = await _timed(AFTER_BURST_SEARCHES, ask)
    note = (
        f"{size}; the first {AFTER_BURST_SEARCHES} questions right after {BURST_DOCUMENTS * FILLER_DOCUMENT} "
        f"rows of changed documents were written ({index.flushes - flushes} flushes meanwhile)"
    )
    out[f"{key}_after_burst_p50_s"] = metric(percentile(burst, 50), "s", "< 0.05", note)
    out[f"{key}_after_burst_p95_s"] = metric(
        percentile(burst, 95), "s", "< 0.1", f"{note}; max {max(burst):.3f} s"
    )
    await _settle(index)


# Freshness sentences: each about something no document mentions, so that a search for one
# finds its own chunk and not another notice.
_NOTICES_EN = [
    "The rooftop sauna is closed for repairs until the end of the month",
    "Lost property is now kept in the office behind the laundry",
    "Guests can borrow umbrellas at the door free of charge",
    "The cloakroom by the lobby is staffed until two in the morning",
    "Electric scooters may not be charged inside the rooms",
    "A night pharmacy is five minutes away on Zionskirchstrasse",
    "The chess club meets in the library every Wednesday evening",
    "Printed newspapers are delivered to the rooms on request",
    "The staff car park behind the kitchen is closed on Sundays",
    "Drones may not be flown from the roof terrace",
    "Sewing kits are in the top drawer of every wardrobe",
    "The piano in the Winter Garden may be played before eight in the evening",
]
_NOTICES_ZH = [
    "屋顶桑拿正在维修，本月底以前暂停开放",
    "失物招领处搬到了洗衣房后面的办公室",
    "客人可以在门口免费借用雨伞",
    "大堂旁边的衣帽间有人值班到凌晨两点",
    "电动滑板车不能在房间里充电",
    "附近步行五分钟有一家夜间药店",
    "国际象棋俱乐部每周三晚上在图书室活动",
    "客人可以要求把报纸送到房间",
    "厨房后面的员工停车场星期天关闭",
    "屋顶露台上不允许放无人机",
    "每个衣柜最上面的抽屉里都有针线包",
]


def _new_version(original: Path, sentence: str) -> bytes:
    """The shipped document with one sentence added (one at a time: each version has its own)."""
    text = original.read_text(encoding="utf-8")
    if original.suffix == ".html":
        return text.replace("</main>", f"<p>{sentence}</p>\n</main>").encode()
    return (text.rstrip("\n") + f"\n\n{sentence}\n").encode()


async def _freshness(out: dict[str, Metric], ingestor: Ingestor, sources: dict[str, Path]) -> None:
    rng = random.Random(11)
    doc_ids = sorted(sources)
    english, chinese = iter(_NOTICES_EN), iter(_NOTICES_ZH)
    changes: list[tuple[str, str, str]] = []  # doc id, sentence, its code
    for n in range(FRESHNESS_SAMPLES):
        doc_id, code = doc_ids[n % len(doc_ids)], f"QX{rng.randint(10_000, 99_999)}"
        zh = doc_id.endswith("_zh")
        sentence = f"{next(chinese)}，编号{code}。" if zh else f"{next(english)} (notice {code})."
        changes.append((doc_id, sentence, code))
    vectors = await ingestor.embeddings.embed_queries([sentence for _, sentence, _ in changes])
    waits: list[float] = []
    handled: list[float] = []
    late = 0
    for (doc_id, sentence, code), vector in zip(changes, vectors, strict=True):
        source = sources[doc_id]
        data = _new_version(FIXTURES / "docs" / source.name, sentence)
        event = _changed(doc_id, source, data)
        version = event.payload.checksum
        _write(source, data)
        started = time.perf_counter()
        await ingestor.handle(event)
        handled.append(time.perf_counter() - started)
        while True:
            hits = await ingestor.index.search(sentence, vector, limit=LIMIT)
            elapsed = time.perf_counter() - started
            mine = [h for h in hits if h.doc_id == doc_id]
            if any(h.version == version and code in h.text for h in mine) and all(
                h.version == version for h in mine
            ):
                break
            if elapsed > FRESHNESS_GIVE_UP_S:
                late += 1
                break
            await asyncio.sleep(0.01)
        waits.append(elapsed)
    note = (
        f"{FRESHNESS_SAMPLES} changes of the shipped documents (a sentence added), ~{SCALES[0]:,} chunks "
        "in the index: file written -> Ingestor.handle (read, parse, chunk, e5, replace, store state) -> "
        "a hybrid search for the new sentence finds it and no chunk of the old version; Ingestor.handle "
        f"alone p50 {percentile(handled, 50):.2f} s, max {max(handled):.2f} s (e5 most of it: 5-12 chunks "
        f"a document); {late} not found within {FRESHNESS_GIVE_UP_S:.0f} s; the event bus hop before it: "
        "see the events suite"
    )
    out["knowledge_freshness_p50_s"] = metric(percentile(waits, 50), "s", "< 2", note)
    out["knowledge_freshness_p95_s"] = metric(percentile(waits, 95), "s", "<= 2", note)


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:50} {value.value:>10} {value.unit:8} goal {value.goal}")
