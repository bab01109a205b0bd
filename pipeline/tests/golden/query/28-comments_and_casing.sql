/* the latest state */ SeLeCt Stream_Key, EVENT_COUNT -- per stream
 FROM Stream_State ORDER BY 1
