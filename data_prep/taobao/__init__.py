"""Taobao UserBehavior (Tianchi 649) -> parquet splits + spec: the ADS paper's public dataset.

Raw format: ``UserBehavior.csv``, no header, comma-separated
``user_id,item_id,category_id,behavior_type,timestamp`` with ``behavior_type`` in
``{pv, buy, cart, fav}`` and unix seconds. The full file has 100,150,807 rows (3.5 GB).

What the converter produces, and how it reads the ADS paper (SIGIR'25, §3.1, "Taobao"):

* **One row per event** (an impression). The label column is ``positive``: ``pv`` -> 0,
  ``buy`` / ``cart`` / ``fav`` -> 1 ("page view is considered as a negative interaction and the
  other actions are regarded as positive label").
* **Date window.** Rows whose local date (UTC+8, Beijing, by default) lies outside
  ``first_date .. last_date`` (2017-11-25 .. 2017-12-03, both inclusive) are dropped before
  anything else is counted.
* **Filters** ("users with at least 200 interactions and 10 positive actions are filtered, and
  items with at least 10 interactions are filtered" is read as KEEP those users / items), applied
  once each, in this order:

  1. users: keep users with ``>= min_user_interactions`` rows and ``>= min_user_positives``
     positive rows, counted over the rows in the date window;
  2. items: keep items with ``>= min_item_interactions`` rows, counted over the rows of the kept
     users.

  Not iterated to a fixed point: after the item filter a kept user may hold fewer than 200 rows.
  (The paper reports 101,342 users, 500,272 items and 24.02M instances after its filtering.)
* **Ids** are re-encoded to contiguous ``[0, n)``: the vocabulary of each of ``user_id``,
  ``item_id`` and ``category_id`` is the set of raw ids present in the kept rows, and the new id is
  the rank of the raw id in ascending order (so the mapping can be rebuilt from the raw file).
* **Domains.** ``--domains category``: each category is a domain (the paper's setting; ~9.4k
  domains), the domain id equals the re-encoded ``category_id`` and the domain name is the raw
  category id. ``--domains category-bucket`` (default): the ``num_domains - 1`` categories with the
  most kept rows are one domain each (domain 0 is the largest; ties go to the smaller raw id;
  names are raw category ids) and all other categories form the last domain, ``other``. When
  there are no more than ``num_domains`` categories, each is its own domain and there is no
  ``other``.
* **Splits by local day** (day 0 = ``first_date``): the paper's "former 7 days are used for training
  and the rest are for testing" is ``train_days=7``. The trainer needs a validation split, so the
  last ``valid_days`` (default 1) of those training days are held out as ``valid``: by default
  train = days 0-5 (11-25 .. 11-30), valid = day 6 (12-01), test = days 7-8 (12-02 .. 12-03).
* **Features:** ``user_id``, ``item_id``, ``category_id``, ``hour`` (0-23) and ``day_of_week``
  (0 = Monday) of the local time, ``group_id`` (= ``user_id``, for GAUC), ``domain``.
* **Behaviour sequence** (group ``hist``): ``hist_item_id`` (table ``item``) and
  ``hist_category_id`` (table ``category``) of the user's kept events with a timestamp strictly
  earlier than the impression, oldest first, the ``max_length`` most recent. ``--history
  positives`` (default) uses only buy/cart/fav events, the usual choice for target attention on
  Taobao (page views are the negatives being ranked); ``--history all`` uses every event and adds
  ``hist_behavior_type`` (table ``behavior_type``: 0 pv, 1 buy, 2 cart, 3 fav). Histories span
  the split boundaries (a test row sees the user's train-day events) but never the future, and
  only contain kept rows (events of filtered items are not in any vocabulary).

Memory stays bounded for the 3.5 GB file: pass 1 streams the CSV (:func:`stream_csv`, small
blocks, because pyarrow's read-ahead queue holds dozens of them), counts per raw id with
``bincount`` and hash-partitions the rows by user into temporary parquet files
(:class:`DiskPartitioner`, next to the output folder); the later passes read one partition at a
time: (2) item counts over the kept users, (3) the final vocabularies and per-category counts,
(4) re-encode, sort, build histories per block of whole users, split by day and write. Rows are
written grouped by user blocks of ~:data:`~data_prep.taobao.write.CHUNK_ROWS` rows, shuffled within
each block (seeded), so that a parquet row group mixes hundreds of users rather than holding one user's sorted log.
Measured on a synthetic 100M-row, 3.65 GB file in this format (2 CPU cores): 105 s, 0.92 GB peak
resident memory, with the automatic 55 partitions.

Where the code lives: :mod:`~data_prep.taobao.options` (``Options`` and the raw format's constants),
:mod:`~data_prep.taobao.read` (pass 1: stream, check, count, partition),
:mod:`~data_prep.taobao.filters` (passes 2-3: filters, vocabularies, domains),
:mod:`~data_prep.taobao.write` (pass 4: histories, shuffled blocks, column specs) and
:mod:`~data_prep.taobao.pipeline` (``convert``: the passes in order, the notes).
"""

from data_prep.taobao.options import BEHAVIORS, RAW_COLUMNS, Options
from data_prep.taobao.pipeline import convert
from data_prep.taobao.write import user_blocks

__all__ = ["BEHAVIORS", "RAW_COLUMNS", "Options", "convert", "user_blocks"]
