"""geoloc_ros.language: places in words (docs/language.md). No ROS imports.

    annotate.py     address / caption text for keyframes: a CSV column, a bag's std_msgs/String topic, or an
                    address table (GeoJSON / CSV points and polygons) matched by position
    text_tower.py   the optional CLIP text tower beside an encoder checkpoint (text -> descriptor space)
    text_search.py  text queries over maps: the text tower when there is one, else SQLite FTS5 on stored text
    geolocate.py    Img2Loc-style geolocation: retrieval estimate, the RAG prompt, plausibility check
    lmm_client.py   the OpenAI-compatible chat-completions client (timeouts, retries, counters)
    losses.py       AddressCLIP's training terms (image-address, image-caption contrast, geographic matching)
"""
