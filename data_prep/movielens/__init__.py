"""MovieLens -> a multi-domain ranking dataset (``mdr data movielens --src PATH --out DIR``).

Inputs, detected from ``--src`` (a folder, a zip archive, or a RecBole ``.inter`` file):

* **GroupLens ml-100k**, the folder or ``ml-100k.zip``: ``u.data`` (tab-separated
  ``user id, item id, rating, timestamp``), ``u.user`` (``id|age|gender|occupation|zip``) and
  ``u.item`` (latin-1, ``movie id|title|release date|video release date|IMDb URL|`` then 19 genre
  flags in the order of :data:`GENRES`).
* **GroupLens ml-1m**, the folder or ``ml-1m.zip``: ``ratings.dat`` (``UserID::MovieID::Rating::
  Timestamp``), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``, Age one of the codes
  1, 18, 25, 35, 45, 50, 56) and ``movies.dat`` (latin-1, ``MovieID::Title::Genres``, genres joined
  by ``|``; the release year is the ``(YYYY)`` that ends the title).
* **RecBole atomic files**: a folder (or one of its ``.inter`` files) holding ``<name>.inter``,
  ``<name>.user`` and ``<name>.item``, tab-separated, with a header of ``field:type`` tokens. Fields
  used: inter ``user_id, item_id, rating, timestamp``; user ``user_id, age, gender, occupation,
  zip_code``; item ``item_id, release_year`` and the genres, ``class`` (RecBole's ml-100k) or
  ``genre`` (its ml-1m), a space-separated ``token_seq``.
* **The RecBole wheel** ``recbole-1.2.1-py3-none-any.whl`` (any zip): the atomic files under
  ``recbole/dataset_example/ml-100k/`` are read straight out of the archive; nothing is installed.

Any zip is searched for exactly one folder holding ``u.data``, ``ratings.dat`` or ``*.inter``.

Output (one row per rating, every rating kept):

* ``click`` (label) = ``rating >= --positive-rating`` (default 4).
* ``domain``: ``--domains age`` (default) -> the user's age group ``age<25``, ``age25-34``,
  ``age>=35`` (ml-1m codes 1, 18 -> <25; 25 -> 25-34; 35, 45, 50, 56 -> >=35; ml-100k / RecBole
  ages are years and use the same cuts). ``--domains genre`` -> the group of the item's *first*
  genre (:data:`GENRE_GROUPS`):

  - ``action_thriller``: Action, Adventure, Crime, Film-Noir, Horror, Mystery, Sci-Fi, Thriller,
    War, Western (suspense and action);
  - ``comedy_family``: Animation, Children's, Comedy, Fantasy, Musical (light and family);
  - ``drama_other``: Drama, Romance, Documentary, unknown and any genre outside the ml-100k list.

  On the real ML-100K this gives about 42 / 29 / 28 % of the ratings. Note that every source lists
  an item's genres alphabetically (ml-100k's flag order is alphabetical after ``unknown``), so
  "first genre" favours early letters: a film tagged Action and Drama is an ``action_thriller``.
* ``group_id`` = ``user_id`` (GAUC per user).
* Ids: ``user_id`` and ``item_id`` are the rank of the raw id among the *rated* users / items
  (numeric order), so cardinalities are the numbers of distinct rated users / items. Users or
  items present only in the side files are dropped; a rating whose user or item is missing from
  the side file is an error.
* User side: ``gender`` (0 = M, 1 = F), ``age_bucket`` (ml-1m's seven bins: <18, 18-24, 25-34,
  35-44, 45-49, 50-55, 56+; ml-100k ages in years are binned the same way, so a code and a year
  land in the same bucket), ``occupation`` (vocabulary of the user file, sorted), ``zip_prefix``
  (first character of the zip code, upper-cased; ``?`` if empty; ml-100k has Canadian codes such
  as ``T8H1N``).
* Item side: ``genre`` (first genre), ``genres`` (multi_id, all genres), ``release_decade``
  (0 = unknown, 1 = before 1930, 2 = 1930s, ..., 9 = 2000s, 10 = 2010 and later). A release year
  that is not four digits (the real RecBole ML-100K has ``unkonwn`` and ``V``; u.item has an empty
  date) is *unknown*, not an error. An item with no genre gets ``unknown``; so do ml-1m's empty
  genre and later releases' ``(no genres listed)``. Genre ids follow :data:`GENRES` (ml-100k
  order); names outside it (``IMAX`` in later releases) are appended in sorted order.
  ``genre``, ``genres`` and ``hist_genre`` share the table ``genre``.
* ``user_activity`` (id) and ``log_prior_ratings`` (dense): the number of the user's ratings
  *strictly before* this one (all ratings, whatever ``--history``), bucketed (0, 1-4, 5-19, 20-49,
  50-99, 100-199, 200+) and as ``log1p``: an implicit domain feature without leakage.
* Behaviour sequence group ``hist``: ``hist_item_id`` (table ``item``) and ``hist_genre`` (table
  ``genre``, first genre), oldest first, the ``--max-length`` most recent of the user's ratings
  with a timestamp strictly earlier than the row's (:func:`data_prep.history.build_history`), so a
  row never sees its own rating nor anything rated in the same second. ``--history all`` (default)
  takes every rated item (rating is an explicit act of watching, whatever the score);
  ``--history positives`` only ratings with ``click = 1``.
* Split: one global timestamp cut (:func:`data_prep.common.temporal_split_points`) so that about
  ``--split-fractions`` (0.8 0.1 0.1) of the rows are train / valid / test; every train row is
  strictly older than every valid row, and every valid row strictly older than every test row.
  Histories of valid / test rows include earlier train (and valid) ratings, as they would online.
  Rows are written in (timestamp, user_id, item_id) order.

Timestamps are whole seconds (RecBole's ``timestamp:float`` is truncated). Bad raw input (missing
file or column, a line with the wrong number of fields, a value that does not parse or is out of
its domain: a rating outside [0, 5], a gender other than M/F, an ml-1m age code outside the seven,
a genre flag other than 0/1) raises :class:`DataError` naming the file, column and line.

Where the code lives: :mod:`~data_prep.movielens.options` (``Options`` and the format's constants),
:mod:`~data_prep.movielens.files` (finding the three files in a folder or zip),
:mod:`~data_prep.movielens.parsing` (text -> typed columns, errors naming the line),
:mod:`~data_prep.movielens.readers` (one reader per format -> raw tables),
:mod:`~data_prep.movielens.features` (joins, vocabularies, domains, split, column specs) and
:mod:`~data_prep.movielens.pipeline` (``convert``: histories and writing).
"""

from data_prep.movielens.options import AGE_BUCKETS, AGE_DOMAINS, GENRE_GROUPS, GENRES, Options
from data_prep.movielens.pipeline import convert
from data_prep.movielens.readers import read

__all__ = ["AGE_BUCKETS", "AGE_DOMAINS", "GENRES", "GENRE_GROUPS", "Options", "convert", "read"]
