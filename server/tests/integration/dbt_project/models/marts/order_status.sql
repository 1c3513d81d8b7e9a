{{ config(materialized='incremental', unique_key='order_key', incremental_strategy='merge') }}

-- Each run merges the orders of the newest month into the table: MERGE by order key.
select order_key, customer_key, status, total_price, order_date
from {{ ref('stg_orders') }}
where order_date <= date '{{ var("orders_through") }}'
{% if is_incremental() %}
  and order_date >= (select max(order_date) from {{ this }}) - interval '31 days'
{% endif %}
