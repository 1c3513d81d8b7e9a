select
    c.c_custkey as customer_key,
    c.c_name as name,
    c.c_mktsegment as segment,
    n.n_name as nation
from {{ source('tpch', 'customer') }} as c
join {{ source('tpch', 'nation') }} as n on c.c_nationkey = n.n_nationkey
